//! What clients see of the networks: each pool's size and use, and for
//! administrators who holds which address (`GET /v1/networks…`). The
//! networks themselves and their address arithmetic are `network.rs`.

use vws_model::Identity;

use crate::core::Service;
use crate::error::ServiceError;

impl Service {
    /// Every network with its pool's size and use.
    pub(crate) async fn networks(&self) -> Result<Vec<serde_json::Value>, ServiceError> {
        let mut out = Vec::new();
        for n in &self.networks.0 {
            let size = n.candidates().map(|c| c.len()).unwrap_or(0);
            let used = self.store.addresses(Some(&n.name)).await?.len();
            out.push(serde_json::json!({ "network": n, "size": size, "used": used, "free": size.saturating_sub(used) }));
        }
        Ok(out)
    }

    /// One network; administrators also see who holds which address.
    pub(crate) async fn network(
        &self,
        who: &Identity,
        name: &str,
    ) -> Result<serde_json::Value, ServiceError> {
        let n = self
            .networks
            .get(name)
            .ok_or_else(|| ServiceError::NotFound(format!("network {name} not found")))?;
        let addresses = self.store.addresses(Some(name)).await?;
        let size = n.candidates().map(|c| c.len()).unwrap_or(0);
        let mut v = serde_json::json!({ "network": n, "size": size, "used": addresses.len(), "free": size.saturating_sub(addresses.len()) });
        if who.is_admin() {
            v["addresses"] = serde_json::to_value(&addresses).map_err(anyhow::Error::from)?;
        }
        Ok(v)
    }
}
