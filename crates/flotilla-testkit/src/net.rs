//! Loopback addresses for tests.

use std::net::{SocketAddr, TcpListener};

/// A 127.0.0.1 address nothing listens on: bound to port 0, read and released.
///
/// For a test that cannot bind port 0 itself: a server it starts later, a child
/// process given `--listen`, a peer that is dead on purpose. Another process may take
/// the port meanwhile; the window is short, and the kernel hands out ports in turn.
pub fn free_addr() -> std::io::Result<SocketAddr> {
    TcpListener::bind("127.0.0.1:0")?.local_addr()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_free_address_is_on_loopback_and_can_be_bound() -> std::io::Result<()> {
        let addr = free_addr()?;
        assert!(addr.ip().is_loopback());
        assert_ne!(addr.port(), 0);
        TcpListener::bind(addr)?;
        Ok(())
    }
}

/// A child process that is killed and reaped when the test lets go of it, however
/// the test ends: no test leaves a process behind.
#[derive(Debug)]
pub struct Reaped(pub std::process::Child);

impl Reaped {
    pub fn spawn(command: &mut std::process::Command) -> std::io::Result<Reaped> {
        command.spawn().map(Reaped)
    }

    pub fn id(&self) -> u32 {
        self.0.id()
    }

    /// Whether it has exited (reaping it if so).
    pub fn exited(&mut self) -> bool {
        self.0.try_wait().map_or(true, |s| s.is_some())
    }
}

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
