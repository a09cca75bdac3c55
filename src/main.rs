//! The `siteboot` binary; everything it does is in the library's `cli`.

/// mimalloc rather than glibc's allocator: under a boot storm the boot
/// path's short-lived allocations were a tenth of the agent's CPU with
/// glibc (issue 24's profile), and the HTTP stack allocates per request.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    siteboot::cli::main()
}
