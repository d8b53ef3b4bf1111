//! stage1 kvm's half of pod networking. CNI sets up the pod's namespace exactly as on ns
//! ([`super::setup`]); then, inside that namespace, every CNI interface gets a tap of its own for
//! the VMM, joined to it with tc ingress redirects both ways (Kata's "tcfilter" model: frames
//! pass between the two unchanged, no bridge, no extra address). The guest's card takes the CNI
//! interface's MAC, MTU, addresses and routes (read back from the namespace, so whatever the
//! plugin did — ptp's /32 gateway route, a bridge's on-link subnet, extra routes — is what the
//! guest gets); the guest init applies them before any app starts.
//!
//! The taps are not persistent: they go with the VMM's file descriptors, and the namespace
//! (with the CNI interfaces and their qdiscs) goes with CNI DEL, as on ns.

use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;

use anyhow::{Context, Result};
use rkt_guest_init::net as gnet;
use rkt_stage2::NetInterface;

/// One network card of the pod's VM.
#[derive(Debug)]
pub struct VmNic {
    /// The tap in the pod's namespace (non-blocking, virtio-net header on every frame).
    pub tap: OwnedFd,
    pub mac: [u8; 6],
    pub mtu: u16,
}

/// The tap name for the pod's `i`-th network (the namespace holds only `lo` and the CNI
/// interfaces `eth<i>`).
fn tap_name(i: usize) -> String {
    format!("tap{i}")
}

/// For every network of the pod's plan, in order: reads what CNI configured on its interface
/// and joins a new tap to it, all from a thread inside `netns` (the calling thread and the rest
/// of the VMM stay where they are). Returns the VM's cards and the guest's interface list.
pub fn wire_vm(pod_dir: &Path, netns: &OwnedFd) -> Result<(Vec<VmNic>, Vec<NetInterface>)> {
    let Some(plan) = super::read_plan(pod_dir)? else {
        return Ok(Default::default());
    };
    let names: Vec<String> = plan.networks.iter().map(|n| n.ifname.clone()).collect();
    let ns = netns.try_clone().context("duplicating the namespace fd")?;
    std::thread::spawn(move || -> Result<(Vec<VmNic>, Vec<NetInterface>)> {
        nix::sched::setns(ns.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)
            .context("entering the pod's network namespace")?;
        let (mut nics, mut ifaces) = (Vec::new(), Vec::new());
        for (i, name) in names.iter().enumerate() {
            let iface = gnet::read_interface(name)
                .with_context(|| format!("reading the CNI interface {name}"))?;
            let tap = tap_name(i);
            let fd = rkt_vmm::devices::virtio::net::tap::open_tap(&tap)
                .with_context(|| format!("creating tap {tap} for {name}"))?;
            let mtu = u16::try_from(iface.mtu).unwrap_or(u16::MAX);
            gnet::link_up(&tap, None, u32::from(mtu))
                .with_context(|| format!("bringing up tap {tap}"))?;
            let (veth, t) = (gnet::index_of(name)?, gnet::index_of(&tap)?);
            gnet::redirect(veth, t)
                .and_then(|()| gnet::redirect(t, veth))
                .with_context(|| format!("joining {name} and {tap} (tc ingress + mirred)"))?;
            nics.push(VmNic {
                tap: fd,
                mac: iface.mac,
                mtu,
            });
            ifaces.push(iface);
        }
        Ok((nics, ifaces))
    })
    .join()
    .map_err(|_| anyhow::anyhow!("the network thread panicked"))?
}

/// The VM template key's part for the cards (template.rs): the guest's driver state at the
/// template point depends on how many cards there are, the MTU each offered and the offload
/// features it acked (`RKT_VIRTIO_NET_OFFLOAD`; a restore into a device offering fewer would be
/// refused). The MAC does not matter: the guest init sets each card's own.
pub fn template_devices(nics: &[VmNic]) -> String {
    let mode = rkt_vmm::devices::virtio::net::offload_mode();
    let sfx = if mode == "all" {
        String::new()
    } else {
        format!("-offload{mode}")
    };
    nics.iter().map(|n| format!(",net{}{sfx}", n.mtu)).collect()
}
