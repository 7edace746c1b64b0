//! `--exit-with-parent`, for desktop hosts that run the supervisor as a sidecar and may crash:
//! stop gracefully (as SIGTERM would) when standard input reaches end of file or the parent
//! process goes away.
//!
//! Three mechanisms, because each covers a case the others miss: stdin EOF (the host closed its
//! pipe or died, on any OS), `PR_SET_PDEATHSIG(SIGTERM)` (the parent died, even if it handed
//! stdin elsewhere), and a `getppid()` check on the main loop tick (the parent died before the
//! prctl took effect).

use crate::control::ControlCommand;
use tokio::sync::mpsc;

/// Arms the watchers. `Stop` is sent on the control channel when stdin closes.
pub fn arm(control: mpsc::Sender<ControlCommand>) -> std::io::Result<u32> {
    let parent = nix::unistd::getppid().as_raw() as u32;
    nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGTERM)?;
    // A blocking read of stdin has no async equivalent worth the complexity; a dedicated thread
    // that ends at EOF (and lives at most as long as the process) is the simple owner.
    std::thread::Builder::new()
        .name("stdin-watch".into())
        .spawn(move || {
            let mut buf = [0u8; 512];
            loop {
                match std::io::Read::read(&mut std::io::stdin(), &mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => continue,
                }
            }
            tracing::info!("standard input closed; stopping (--exit-with-parent)");
            let _ = control.blocking_send(ControlCommand::Stop);
        })?;
    Ok(parent)
}

/// True when the parent recorded by `arm` is gone (we were re-parented).
pub fn parent_gone(parent: u32) -> bool {
    nix::unistd::getppid().as_raw() as u32 != parent
}
