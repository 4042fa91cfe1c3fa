//! The client commands (`tokex purge`, `tokex dev-sts mint`, `tokex dev-sts
//! revoke`) run one request each on a one-thread runtime.

use std::process::ExitCode;

/// Runs `f` to completion on a one-thread runtime. `Err`, with the reason
/// on stderr, when no runtime can be made.
pub fn block_on<F: std::future::Future>(f: F) -> Result<F::Output, ExitCode> {
    match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => Ok(rt.block_on(f)),
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            Err(ExitCode::FAILURE)
        }
    }
}
