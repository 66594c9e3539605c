//! The `[overlay]` section: Cilium's routing modes (VXLAN, Geneve, native).

use super::{bad, Config, ConfigError};
use serde::Deserialize;
use std::net::IpAddr;

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum OverlayModeCfg {
    Off,
    Vxlan,
    Geneve,
    Native,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct OverlayCfg {
    /// "off", "vxlan", "geneve" (tunnel modes) or "native" (routing without encapsulation).
    #[serde(default = "overlay_off")]
    pub mode: OverlayModeCfg,
    /// Tunnel UDP port; 0 = the mode's default (8472 for VXLAN like Cilium, 6081 for Geneve).
    #[serde(default)]
    pub port: u16,
    /// This node's underlay address: the outer source, where peers send tunnel traffic.
    #[serde(default)]
    pub local_ip: Option<String>,
    /// This appliance's Node name in the cluster (its own pod CIDR is not encapsulated to).
    #[serde(default)]
    pub local_node: Option<String>,
    /// Underlay MTU (the outer IP packet must fit).
    #[serde(default = "default_mtu")]
    pub mtu: u16,
    /// Identity carried in the VNI for traffic from outside the cluster (Cilium's world = 2).
    #[serde(default = "default_world")]
    pub world_identity: u32,
    /// Geneve: also carry the identity in a TLV option.
    #[serde(default)]
    pub geneve_identity_option: bool,
}

fn overlay_off() -> OverlayModeCfg {
    OverlayModeCfg::Off
}
fn default_mtu() -> u16 {
    1500
}
fn default_world() -> u32 {
    2
}

impl Default for OverlayCfg {
    fn default() -> Self {
        OverlayCfg {
            mode: OverlayModeCfg::Off,
            port: 0,
            local_ip: None,
            local_node: None,
            mtu: default_mtu(),
            world_identity: default_world(),
            geneve_identity_option: false,
        }
    }
}

impl Config {
    /// The overlay settings as the datapath takes them.
    pub fn overlay(&self) -> Result<sluice_dataplane::state::Overlay, ConfigError> {
        use sluice_dataplane::state::{Overlay, OverlayMode};
        let o = &self.overlay;
        let mode = match o.mode {
            OverlayModeCfg::Off => OverlayMode::Off,
            OverlayModeCfg::Vxlan => OverlayMode::Vxlan,
            OverlayModeCfg::Geneve => OverlayMode::Geneve,
            OverlayModeCfg::Native => OverlayMode::Native,
        };
        let local_ip = match &o.local_ip {
            None => None,
            Some(s) => Some(
                s.parse::<IpAddr>()
                    .map_err(|_| bad("overlay.local_ip", format!("{s:?} is not an IP address")))?,
            ),
        };
        if matches!(mode, OverlayMode::Vxlan | OverlayMode::Geneve) && local_ip.is_none() {
            return Err(bad(
                "overlay.local_ip",
                "a tunnel mode needs this node's underlay address",
            ));
        }
        if !(576..=9216).contains(&o.mtu) {
            return Err(bad(
                "overlay.mtu",
                format!("{} is outside 576..=9216", o.mtu),
            ));
        }
        if o.world_identity == 0 || o.world_identity > 0x00ff_ffff {
            return Err(bad(
                "overlay.world_identity",
                "must be a 24-bit identity other than 0",
            ));
        }
        let port = match (o.port, mode) {
            (0, OverlayMode::Geneve) => 6081,
            (0, _) => 8472,
            (p, _) => p,
        };
        Ok(Overlay {
            mode,
            port,
            local_ip,
            mtu: o.mtu,
            world_identity: o.world_identity,
            geneve_identity_option: o.geneve_identity_option,
        })
    }
}
