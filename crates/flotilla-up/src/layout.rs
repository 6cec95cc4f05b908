//! The state directory of one `flotilla up` run:
//!
//! ```text
//! STATE/.flotilla-up              marks the directory as ours (only then is it wiped)
//! STATE/admin/                    the admin identity for `flotilla ctl --config-dir`
//! STATE/admin/api-key             with --governance: the API key of up's own load
//! STATE/endpoints.json            every process's address, for scripts
//! STATE/<cluster>/server/         the server's data directory (Raft log, pki/)
//! STATE/<cluster>/agent/          the agent's state directory (pki/)
//! STATE/<cluster>/gateway/        the gateway's state directory (pki/)
//! STATE/<cluster>/fleet.toml      the simulated GPU fleet the agent reads
//! STATE/logs/<cluster>-<role>.log every process's output
//! ```

use crate::UpError;
use std::path::{Path, PathBuf};

const MARKER: &str = ".flotilla-up";

#[derive(Debug, Clone)]
pub struct StateDir {
    root: PathBuf,
}

impl StateDir {
    /// Prepares `root` for a fresh run: creates it, or empties it if an earlier run
    /// left it. A directory with other content is refused rather than wiped.
    pub fn prepare(root: &Path) -> Result<StateDir, UpError> {
        let io = |e: std::io::Error| UpError::Io {
            path: root.to_owned(),
            source: e,
        };
        if root.exists() {
            let mut entries = std::fs::read_dir(root).map_err(io)?;
            let empty = entries.next().is_none();
            if !empty {
                if !root.join(MARKER).exists() {
                    return Err(UpError::Option {
                        flag: "--state-dir",
                        message: format!(
                            "{} is not empty and was not made by `flotilla up`; choose another directory",
                            root.display()
                        ),
                    });
                }
                std::fs::remove_dir_all(root).map_err(io)?;
            }
        }
        std::fs::create_dir_all(root.join("logs")).map_err(io)?;
        std::fs::write(
            root.join(MARKER),
            "made by `flotilla up`; emptied by the next run\n",
        )
        .map_err(io)?;
        Ok(StateDir {
            root: root.to_owned(),
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn admin_dir(&self) -> PathBuf {
        self.root.join("admin")
    }

    pub fn api_key_file(&self) -> PathBuf {
        self.admin_dir().join("api-key")
    }

    pub fn server_dir(&self, cluster: &str) -> PathBuf {
        self.root.join(cluster).join("server")
    }

    pub fn server_pki(&self, cluster: &str) -> PathBuf {
        self.server_dir(cluster).join("pki")
    }

    pub fn agent_dir(&self, cluster: &str) -> PathBuf {
        self.root.join(cluster).join("agent")
    }

    pub fn agent_pki(&self, cluster: &str) -> PathBuf {
        self.agent_dir(cluster).join("pki")
    }

    pub fn gateway_dir(&self, cluster: &str) -> PathBuf {
        self.root.join(cluster).join("gateway")
    }

    pub fn gateway_pki(&self, cluster: &str) -> PathBuf {
        self.gateway_dir(cluster).join("pki")
    }

    pub fn fleet(&self, cluster: &str) -> PathBuf {
        self.root.join(cluster).join("fleet.toml")
    }

    pub fn log(&self, cluster: &str, role: &str) -> PathBuf {
        self.root.join("logs").join(format!("{cluster}-{role}.log"))
    }
}
