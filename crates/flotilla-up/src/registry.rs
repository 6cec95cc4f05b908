//! `up`'s own link to the federation, as its admin: apply settings and workloads,
//! and read the registry for the live view. Any server will do; one that fails is
//! left for the next.

use crate::UpError;
use flotilla_client::{RegistryClient, TransportSecurity};
use flotilla_core::{Command, State};
use std::time::Duration;

#[derive(Debug)]
pub struct Registry {
    servers: Vec<(String, RegistryClient)>,
    current: usize,
    timeout: Duration,
}

impl Registry {
    pub fn new(servers: &[String], security: &TransportSecurity) -> Result<Registry, UpError> {
        let servers = servers
            .iter()
            .map(|a| {
                RegistryClient::new(a, security)
                    .map(|c| (a.clone(), c))
                    .map_err(|e| UpError::Registry(format!("{a}: {e}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Registry {
            servers,
            current: 0,
            timeout: Duration::from_secs(3),
        })
    }

    /// Proposes `command` until a server answers; a refusal by core is an error
    /// that names the command and why.
    pub async fn propose(&mut self, command: &Command) -> Result<(), UpError> {
        let mut last = String::new();
        for _ in 0..self.servers.len().max(1) * 3 {
            let i = self.current % self.servers.len().max(1);
            let Some((addr, client)) = self.servers.get_mut(i) else {
                break;
            };
            match tokio::time::timeout(self.timeout, client.propose(command)).await {
                Ok(Ok(reply)) if reply.applied => return Ok(()),
                Ok(Ok(reply)) => {
                    return Err(UpError::Registry(format!(
                        "the registry refused {}: {}",
                        command.kind(),
                        reply.rejection_message
                    )));
                }
                Ok(Err(e)) => last = format!("{addr}: {e}"),
                Err(_) => last = format!("{addr}: no answer within {:?}", self.timeout),
            }
            self.current += 1;
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        Err(UpError::Registry(format!(
            "no server accepted {}; last error: {last}",
            command.kind()
        )))
    }

    /// The registry as the current server holds it (a local read: the view may be a
    /// heartbeat behind, which a live view does not mind).
    pub async fn read(&mut self) -> Result<State, UpError> {
        let mut last = String::new();
        for _ in 0..self.servers.len().max(1) {
            let i = self.current % self.servers.len().max(1);
            let Some((addr, client)) = self.servers.get_mut(i) else {
                break;
            };
            match tokio::time::timeout(self.timeout, client.read_state(false)).await {
                Ok(Ok((_, state))) => return Ok(state),
                Ok(Err(e)) => last = format!("{addr}: {e}"),
                Err(_) => last = format!("{addr}: no answer within {:?}", self.timeout),
            }
            self.current += 1;
        }
        Err(UpError::Registry(format!(
            "no server answered a read; last error: {last}"
        )))
    }

    /// Whether `addr` answers as a member that knows a leader.
    pub async fn member_ready(addr: &str, security: &TransportSecurity) -> bool {
        let Ok(mut client) = RegistryClient::new(addr, security) else {
            return false;
        };
        matches!(
            tokio::time::timeout(Duration::from_secs(2), client.status()).await,
            Ok(Ok(s)) if s.leader_id != 0
        )
    }
}
