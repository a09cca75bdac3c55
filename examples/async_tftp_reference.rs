//! The requested TFTP crate, async-tftp, serving a directory read-only with
//! its defaults: the third column of `cargo bench --bench agent`, kept so
//! that the decision to replace it (README, "TFTP engine") stays measured.
//!
//! usage: async_tftp_reference DIR ADDR   (prints "listening ADDR" when up)

use async_tftp::server::TftpServerBuilder;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let (Some(dir), Some(addr)) = (args.next(), args.next()) else {
        anyhow::bail!("usage: async_tftp_reference DIR ADDR");
    };
    let server = TftpServerBuilder::with_dir_ro(&dir)?
        .bind(addr.parse()?)
        .build()
        .await?;
    println!("listening {}", server.listen_addr()?);
    server.serve().await?;
    Ok(())
}
