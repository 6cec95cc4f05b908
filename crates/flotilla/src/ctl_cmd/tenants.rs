//! `flotilla ctl tenant …` and `flotilla ctl key …`: tenants and their API keys.

use super::{ExitWith, Output, code, print, rpc_error};
use flotilla_proto::v1 as pb;
use flotilla_proto::v1::tenant_service_client::TenantServiceClient;
use serde_json::json;
use tonic::transport::Channel;

#[derive(Debug, clap::Subcommand)]
pub(super) enum TenantCommand {
    /// Creates a tenant; refused when it exists (`set` replaces one).
    Create {
        name: String,
        /// A workload identity (spiffe://…) that calls as this tenant; repeatable.
        #[arg(long = "spiffe-id", value_name = "SPIFFE_ID")]
        identities: Vec<String>,
    },
    /// Creates or replaces a tenant.
    Set {
        name: String,
        /// A workload identity (spiffe://…) that calls as this tenant; repeatable.
        #[arg(long = "spiffe-id", value_name = "SPIFFE_ID")]
        identities: Vec<String>,
        /// Only if the tenant is still at this etag (`tenant get` shows it).
        #[arg(long)]
        etag: Option<String>,
    },
    /// Shows one tenant, or lists them all.
    Get { name: Option<String> },
    /// Deletes a tenant and its API keys (its policy stays until deleted).
    Delete {
        name: String,
        /// Only if the tenant is still at this etag.
        #[arg(long)]
        etag: Option<String>,
    },
}

#[derive(Debug, clap::Subcommand)]
pub(super) enum KeyCommand {
    /// Makes an API key for a tenant and prints it, once: the registry keeps only
    /// its hash.
    Create {
        #[arg(long)]
        tenant: String,
        /// How long it works ("720h", "30m"); without it, until revoked.
        #[arg(long, value_name = "DURATION")]
        expires: Option<String>,
    },
    /// Revokes an API key by its id (`key list` shows them): every gateway refuses
    /// it from then on.
    Revoke { id: String },
    /// Lists API keys' records (never the keys).
    List {
        /// Only this tenant's.
        #[arg(long)]
        tenant: Option<String>,
    },
}

fn invalid(message: String) -> anyhow::Error {
    ExitWith {
        code: code::INVALID,
        message,
    }
    .into()
}

/// The same check the server makes, without the round trip.
fn checked(name: &str, identities: &[String]) -> anyhow::Result<flotilla_core::Tenant> {
    let tenant = flotilla_core::Tenant {
        name: name.to_owned(),
        identities: identities.to_vec(),
    };
    tenant.validate().map_err(|e| invalid(e.to_string()))?;
    Ok(tenant)
}

async fn set(ch: &Channel, tenant: flotilla_core::Tenant, etag: String) -> anyhow::Result<u64> {
    let name = tenant.name.clone();
    let r = TenantServiceClient::new(ch.clone())
        .set_tenant(pb::SetTenantRequest {
            tenant: Some(pb::Tenant {
                etag,
                ..flotilla_client::convert::tenant_to(&tenant, 0)
            }),
        })
        .await
        .map_err(|s| {
            if s.code() == tonic::Code::Aborted {
                ExitWith {
                    code: code::CONFLICT,
                    message: format!(
                        "tenant {name:?} exists already or changed since it was read ({}); `tenant set` replaces it",
                        s.message()
                    ),
                }
                .into()
            } else {
                rpc_error(&format!("set tenant {name:?}"), s)
            }
        })?;
    Ok(r.into_inner().log_index)
}

pub(super) async fn tenant(
    ch: &Channel,
    output: Output,
    command: &TenantCommand,
) -> anyhow::Result<()> {
    match command {
        TenantCommand::Create { name, identities } => {
            let index = set(ch, checked(name, identities)?, "0".into()).await?;
            println!("tenant/{name} created (log index {index})");
            Ok(())
        }
        TenantCommand::Set {
            name,
            identities,
            etag,
        } => {
            let tenant = checked(name, identities)?;
            let index = set(ch, tenant, etag.clone().unwrap_or_default()).await?;
            println!("tenant/{name} set (log index {index})");
            Ok(())
        }
        TenantCommand::Get { name } => {
            let tenants = match name {
                Some(name) => vec![
                    TenantServiceClient::new(ch.clone())
                        .get_tenant(pb::GetTenantRequest {
                            name: name.clone(),
                            allow_stale: false,
                        })
                        .await
                        .map_err(|s| rpc_error(&format!("get tenant {name:?}"), s))?
                        .into_inner()
                        .tenant
                        .unwrap_or_default(),
                ],
                None => flotilla_client::lists::tenants(ch, false)
                    .await
                    .map_err(|s| rpc_error("list tenants", s))?,
            };
            let rows = tenants
                .iter()
                .map(|t| vec![t.name.clone(), t.identities.join(","), t.etag.clone()])
                .collect();
            let js = tenants
                .iter()
                .map(|t| json!({"name": t.name, "identities": t.identities, "etag": t.etag}))
                .collect();
            print(output, &["TENANT", "IDENTITIES", "ETAG"], rows, js)
        }
        TenantCommand::Delete { name, etag } => {
            TenantServiceClient::new(ch.clone())
                .delete_tenant(pb::DeleteTenantRequest {
                    name: name.clone(),
                    etag: etag.clone().unwrap_or_default(),
                })
                .await
                .map_err(|s| rpc_error(&format!("delete tenant {name:?}"), s))?;
            println!("tenant/{name} deleted, with its API keys");
            Ok(())
        }
    }
}

pub(super) async fn key(ch: &Channel, output: Output, command: &KeyCommand) -> anyhow::Result<()> {
    match command {
        KeyCommand::Create { tenant, expires } => {
            let expire_time = match expires {
                Some(text) => {
                    let after: flotilla_core::Millis = text
                        .parse()
                        .map_err(|e| invalid(format!("--expires {text:?}: {e}")))?;
                    if after.0 == 0 {
                        return Err(invalid("--expires must be longer than 0".into()));
                    }
                    let now = flotilla_client::convert::timestamp_of(std::time::SystemTime::now());
                    Some(flotilla_client::convert::time_to(now + after))
                }
                None => None,
            };
            let made = TenantServiceClient::new(ch.clone())
                .create_api_key(pb::CreateApiKeyRequest {
                    tenant: tenant.clone(),
                    expire_time,
                })
                .await
                .map_err(|s| rpc_error(&format!("create an API key for tenant {tenant:?}"), s))?
                .into_inner();
            let record = made.record.unwrap_or_default();
            match output {
                Output::Table => {
                    eprintln!(
                        "API key {} for tenant {tenant}, expires {}; shown once, the registry keeps only its hash:",
                        record.id,
                        expires
                            .as_deref()
                            .map_or("never".into(), |e| format!("in {e}"))
                    );
                    println!("{}", made.key);
                }
                Output::Json | Output::Yaml => super::emit(
                    output,
                    &json!({"key": made.key, "id": record.id, "tenant": record.tenant,
                        "expire_time_s": record.expire_time.map(|t| t.seconds)}),
                )?,
            }
            Ok(())
        }
        KeyCommand::Revoke { id } => {
            TenantServiceClient::new(ch.clone())
                .revoke_api_key(pb::RevokeApiKeyRequest { id: id.clone() })
                .await
                .map_err(|s| rpc_error(&format!("revoke API key {id:?}"), s))?;
            println!("key/{id} revoked");
            Ok(())
        }
        KeyCommand::List { tenant } => {
            let keys = flotilla_client::lists::api_keys(ch, tenant.as_deref().unwrap_or(""), false)
                .await
                .map_err(|s| rpc_error("list API keys", s))?;
            let rows = keys
                .iter()
                .map(|k| {
                    vec![
                        k.id.clone(),
                        k.tenant.clone(),
                        k.expire_time
                            .as_ref()
                            .map_or_else(|| "never".to_owned(), |t| t.seconds.to_string()),
                        if k.revoked { "revoked" } else { "active" }.to_owned(),
                    ]
                })
                .collect();
            let js = keys
                .iter()
                .map(|k| {
                    json!({"id": k.id, "tenant": k.tenant, "revoked": k.revoked,
                        "expire_time_s": k.expire_time.map(|t| t.seconds)})
                })
                .collect();
            print(
                output,
                &["ID", "TENANT", "EXPIRES (UNIX S)", "STATE"],
                rows,
                js,
            )
        }
    }
}
