//! The agent's HTTP stack with none of the agent's work: hyper (HTTP/1.1,
//! keep-alive) on the same multi-threaded tokio runtime, answering every
//! request with one file's bytes and the headers of a boot answer. A row
//! of `cargo bench --bench agent -- speed`: what `/api/v1/boot` could reach
//! at most with this stack, beside nginx serving the same bytes.
//!
//! usage: hyper_reference FILE ADDR   (prints "listening ADDR" when up)

use std::convert::Infallible;

use hyper_util::rt::TokioIo;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let (Some(file), Some(addr)) = (args.next(), args.next()) else {
        anyhow::bail!("usage: hyper_reference FILE ADDR");
    };
    let script = bytes::Bytes::from(std::fs::read(&file)?);
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    println!("listening {}", listener.local_addr()?);
    loop {
        let (stream, _) = listener.accept().await?;
        let script = script.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |_request| {
                let response = hyper::Response::builder()
                    .header("content-type", "text/plain; charset=utf-8")
                    .header("cache-control", "no-store")
                    .header("x-siteboot-source", "standalone")
                    .body(axum::body::Body::from(script.clone()));
                async move {
                    Ok::<_, Infallible>(
                        response
                            .unwrap_or_else(|_| hyper::Response::new(axum::body::Body::empty())),
                    )
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}
