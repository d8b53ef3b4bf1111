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
//!
//! A joined namespace (`--net=<path>`, containerd's CRI sandbox) is wired the same way, with
//! its own interfaces in place of rkt's CNI ones: every interface but `lo` that has a global
//! address (Kata's rule: unaddressed ones are tunnel base devices or half-made), in the
//! namespace's order, becomes guest card `eth<i>`. The namespace is not rkt's: an interface
//! that already has an ingress qdisc is someone else's redirect and is refused; the qdiscs
//! rkt adds are recorded in `<pod>/net-joined.json` and removed at teardown ([`release_joined`],
//! also from gc), which leaves the namespace as it was.

use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use anyhow::{bail, Context, Result};
use rkt_guest_init::net as gnet;
use rkt_stage2::NetInterface;
use serde::{Deserialize, Serialize};

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
    if let Some(p) = &plan.join {
        return wire_joined(pod_dir, netns, p);
    }
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

/// The interfaces rkt redirected in a joined namespace, for teardown: the namespace's identity
/// (its nsfs device and inode) and each interface's name and index, so that a namespace or
/// interface recreated under the same name since is never touched.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Joined {
    dev: u64,
    ino: u64,
    interfaces: Vec<(String, u32)>,
}

pub(super) const JOINED_FILE: &str = "net-joined.json";

/// Opens the tap for card `i` and joins it to `iface` (index `index`) both ways.
fn join_tap(i: usize, pod: &str, iface: &str, index: u32, mtu: u16) -> Result<OwnedFd> {
    // Unique per pod: the namespace is shared with whatever else lives in it.
    let tap = format!("tap{i}_{}", &pod[..pod.len().min(8)]);
    let fd = rkt_vmm::devices::virtio::net::tap::open_tap(&tap)
        .with_context(|| format!("creating tap {tap} for {iface}"))?;
    gnet::link_up(&tap, None, u32::from(mtu)).with_context(|| format!("bringing up tap {tap}"))?;
    let t = gnet::index_of(&tap)?;
    gnet::redirect(index, t)
        .and_then(|()| gnet::redirect(t, index))
        .with_context(|| format!("joining {iface} and {tap} (tc ingress + mirred)"))?;
    Ok(fd)
}

/// [`wire_vm`] for a namespace the pod joins. Every ingress qdisc added is recorded before the
/// next step, so a failure here (or a kill) leaves [`release_joined`] what to remove.
fn wire_joined(
    pod_dir: &Path,
    netns: &OwnedFd,
    path: &Path,
) -> Result<(Vec<VmNic>, Vec<NetInterface>)> {
    let st = std::fs::File::from(netns.try_clone()?)
        .metadata()
        .context("the joined namespace")?;
    let mut rec = Joined {
        dev: st.dev(),
        ino: st.ino(),
        interfaces: Vec::new(),
    };
    let record = pod_dir.join(JOINED_FILE);
    let pod = pod_dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let shown = path.display().to_string();
    let ns = netns.try_clone().context("duplicating the namespace fd")?;
    std::thread::spawn(move || -> Result<(Vec<VmNic>, Vec<NetInterface>)> {
        nix::sched::setns(ns.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)
            .context("entering the joined network namespace")?;
        let dev = std::fs::read_to_string("/proc/thread-self/net/dev")
            .context("listing its interfaces")?;
        let mut usable = Vec::new();
        let mut skipped = Vec::new();
        for l in dev.lines().skip(2) {
            let name = l.split(':').next().unwrap_or_default().trim();
            if name.is_empty() || name == "lo" {
                continue;
            }
            let iface = gnet::read_interface(name).with_context(|| format!("reading {name}"))?;
            if iface.addresses.is_empty() {
                skipped.push(name.to_string());
            } else {
                usable.push(iface);
            }
        }
        // Only lo: the pod gets loopback only, as on ns. Interfaces but none the VM could take
        // over: the user meant the pod to be on them; say so rather than boot it cut off.
        if usable.is_empty() && !skipped.is_empty() {
            bail!(
                "--net={shown}: no interface of the namespace has an address for the VM to take \
                 over ({} without one; stage1 kvm wires addressed interfaces only)",
                skipped.join(", ")
            );
        }
        let (mut nics, mut ifaces) = (Vec::new(), Vec::new());
        for (i, mut iface) in usable.into_iter().enumerate() {
            let name = iface.name.clone();
            let index = gnet::index_of(&name)?;
            match gnet::add_ingress_exclusive(index) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => bail!(
                    "--net={shown}: {name} already has an ingress qdisc (its traffic is \
                     redirected by someone else, another VM?); not taking it over"
                ),
                Err(e) => {
                    return Err(e).with_context(|| format!("adding an ingress qdisc to {name}"))
                }
            }
            rec.interfaces.push((name.clone(), index));
            crate::pod::write_runtime(&record, &serde_json::to_vec(&rec)?)?;
            let mtu = u16::try_from(iface.mtu).unwrap_or(u16::MAX);
            let tap = join_tap(i, &pod, &name, index, mtu)?;
            nics.push(VmNic {
                tap,
                mac: iface.mac,
                mtu,
            });
            // The guest names its cards in order, whatever the namespace called them.
            iface.name = format!("eth{i}");
            ifaces.push(iface);
        }
        Ok((nics, ifaces))
    })
    .join()
    .map_err(|_| anyhow::anyhow!("the network thread panicked"))?
}

/// Removes the ingress qdiscs (and so the redirect filters) rkt added in the joined namespace
/// at `path`, if it is still the same namespace and each interface still the same one; the
/// record goes once they are gone. A namespace that is gone took them with it.
pub(super) fn release_joined(pod_dir: &Path, path: &Path) -> Result<()> {
    let record = pod_dir.join(JOINED_FILE);
    let rec: Joined = match std::fs::read(&record) {
        Ok(b) => serde_json::from_slice(&b).context("reading the joined interfaces record")?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e).context("reading the joined interfaces record"),
    };
    let same = match std::fs::File::open(path) {
        Ok(f) => {
            let st = f.metadata()?;
            (st.dev() == rec.dev && st.ino() == rec.ino).then_some(f)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(e).with_context(|| format!("opening {}", path.display())),
    };
    if let Some(f) = same {
        let ns: OwnedFd = f.into();
        std::thread::spawn(move || -> Result<()> {
            nix::sched::setns(ns.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)
                .context("entering the joined network namespace")?;
            for (name, index) in &rec.interfaces {
                if gnet::index_of(name).ok() == Some(*index) {
                    gnet::remove_ingress(*index)
                        .with_context(|| format!("removing the ingress qdisc of {name}"))?;
                }
            }
            Ok(())
        })
        .join()
        .map_err(|_| anyhow::anyhow!("the network thread panicked"))??;
    }
    match std::fs::remove_file(&record) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(e).context("removing the joined interfaces record")
        }
        _ => Ok(()),
    }
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
