//! The `siteboot` binary; everything it does is in the library's `cli`.

fn main() -> std::process::ExitCode {
    siteboot::cli::main()
}
