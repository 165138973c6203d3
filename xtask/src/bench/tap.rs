//! The host side of the benchmark's TCP path: a network namespace with a
//! tap device for QEMU, and a sink that counts what the guest sends.

use std::fs;
use std::io::Read;
use std::net::TcpListener;

use anyhow::{bail, Context, Result};
use xshell::{cmd, Shell};

/// The host side of the guest's TCP path: a network namespace holding a
/// tap device, addresses from 198.18.0.0/15 (reserved for benchmarks), so
/// nothing outside the namespace sees the traffic. Deleted on drop.
pub struct TapNet {
    pub netns: String,
}

const TAP: &str = "sztap0";
pub const HOST_ADDR: &str = "198.18.1.1";
const GUEST_ADDR: &str = "198.18.1.2";

impl TapNet {
    pub fn create() -> Result<TapNet> {
        let sh = Shell::new()?;
        let netns = format!("sendzc-bench-{}", std::process::id());
        cmd!(sh, "ip netns add {netns}")
            .run()
            .context("cannot create a network namespace (needs root)")?;
        let net = TapNet { netns };
        let ns = &net.netns;
        let host = format!("{HOST_ADDR}/24");
        cmd!(sh, "ip -n {ns} link set lo up").run()?;
        cmd!(sh, "ip -n {ns} tuntap add dev {TAP} mode tap vnet_hdr")
            .run()
            .context("cannot create the tap device (is /dev/net/tun there?)")?;
        cmd!(sh, "ip -n {ns} addr add {host} dev {TAP}").run()?;
        cmd!(sh, "ip -n {ns} link set {TAP} up").run()?;
        Ok(net)
    }

    /// QEMU options: virtio-net on the tap, with vnet_hdr offloads.
    pub fn qemu_opts(&self) -> String {
        format!(
            "-netdev tap,id=bench0,ifname={TAP},script=no,downscript=no,vnet_hdr=on \
             -device virtio-net-pci,netdev=bench0"
        )
    }

    /// The guest's shell commands that bring its end up: the virtio-net on
    /// the tap is the guest's only interface with a device behind it (lo
    /// and the built-in dummy0 have none).
    pub fn guest_setup() -> String {
        format!(
            "nic=$(basename $(dirname /sys/class/net/*/device)) && \
             ip addr add {GUEST_ADDR}/24 dev $nic && ip link set $nic up"
        )
    }

    /// Accepts connections on the tap's address, inside the namespace, and
    /// discards what they send; returns the port.
    pub fn start_sink(&self) -> Result<u16> {
        let path = format!("/run/netns/{}", self.netns);
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let listener = enter_netns(&path).and_then(|()| {
                TcpListener::bind((HOST_ADDR, 0)).context("binding the sink in the namespace")
            });
            let listener = match listener {
                Ok(l) => l,
                Err(e) => {
                    let _ = tx.send(Err(e));
                    return;
                }
            };
            let _ = tx.send(listener.local_addr().map(|a| a.port()).map_err(Into::into));
            for conn in listener.incoming().flatten() {
                std::thread::spawn(move || {
                    let mut conn = conn;
                    let mut buf = vec![0u8; 1 << 20];
                    while matches!(conn.read(&mut buf), Ok(n) if n > 0) {}
                });
            }
        });
        rx.recv().context("the sink thread died")?
    }
}

impl Drop for TapNet {
    fn drop(&mut self) {
        if let Ok(sh) = Shell::new() {
            let ns = &self.netns;
            let _ = cmd!(sh, "ip netns del {ns}").quiet().run();
        }
    }
}

/// Moves the calling thread (only it) into the namespace at `path`.
fn enter_netns(path: &str) -> Result<()> {
    let ns = fs::File::open(path).with_context(|| format!("opening {path}"))?;
    // SAFETY: setns() on a valid fd we own; it changes only this thread's
    // network namespace and touches no memory of ours.
    let rc = unsafe { libc::setns(std::os::fd::AsRawFd::as_raw_fd(&ns), libc::CLONE_NEWNET) };
    if rc != 0 {
        bail!("setns({path}): {}", std::io::Error::last_os_error());
    }
    Ok(())
}
