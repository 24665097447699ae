//! Virtual machines for tests that need a kernel of their own: Debian's cloud kernel under
//! QEMU's software emulation (`-accel tcg`: nested KVM hangs on these machines), booted
//! into an initramfs built here from busybox-static, the static swarmlet binary, the
//! kernel modules a test names, and files it adds.
//!
//! The kernel package is fetched once with `apt-get download` and unpacked under
//! `target/qemu/<arch>/`, so reruns need nothing from the network.
//!
//! Boot: a first `/init` copies the initramfs into a tmpfs and `switch_root`s into it
//! (pivot_root(2), which container runtimes use, refuses to leave the initial ramfs). The
//! second init mounts /proc, /sys, /dev, cgroup2 (the unified hierarchy alone, as on
//! Raspberry Pi OS), loads the modules, and serves a control channel: a virtio serial
//! port wired to a unix socket on the host. Over it the test runs shell scripts and reads
//! their exit code and output ([`Vm::exec`]). The kernel console goes to `console.log`,
//! printed when a test fails.

#![allow(dead_code, clippy::unwrap_used, clippy::cast_possible_truncation)] // test code

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The machine types the harness boots.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arch {
    X86_64,
    Aarch64,
}

impl Arch {
    /// `SWARMLET_QEMU_ARCH` (x86_64 or aarch64), by default the host's.
    pub fn from_env() -> Arch {
        match std::env::var("SWARMLET_QEMU_ARCH").as_deref() {
            Ok("aarch64") => Arch::Aarch64,
            Ok("x86_64") => Arch::X86_64,
            Ok(other) => panic!("SWARMLET_QEMU_ARCH={other}: known are x86_64 and aarch64"),
            Err(_) if cfg!(target_arch = "aarch64") => Arch::Aarch64,
            Err(_) => Arch::X86_64,
        }
    }

    /// The machine these tests run on.
    pub fn host() -> Arch {
        if cfg!(target_arch = "aarch64") {
            Arch::Aarch64
        } else {
            Arch::X86_64
        }
    }

    /// The architecture's name in OCI image configs.
    pub fn oci(self) -> &'static str {
        self.debian()
    }

    pub fn name(self) -> &'static str {
        match self {
            Arch::X86_64 => "x86_64",
            Arch::Aarch64 => "aarch64",
        }
    }

    fn debian(self) -> &'static str {
        match self {
            Arch::X86_64 => "amd64",
            Arch::Aarch64 => "arm64",
        }
    }

    fn qemu(self) -> &'static str {
        match self {
            Arch::X86_64 => "qemu-system-x86_64",
            Arch::Aarch64 => "qemu-system-aarch64",
        }
    }

    fn console(self) -> &'static str {
        match self {
            Arch::X86_64 => "ttyS0",
            Arch::Aarch64 => "ttyAMA0",
        }
    }
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("target"),
        PathBuf::from,
    )
}

/// The static swarmlet binary for `arch`, as `just cross-build` leaves it.
pub fn swarmlet_binary(arch: Arch) -> PathBuf {
    let p = target_dir()
        .join(format!("{}-unknown-linux-musl", arch.name()))
        .join("release/swarmlet");
    assert!(
        p.exists(),
        "{} is missing: run `just cross-build {}` first (`just test` and `just qemu-test` do)",
        p.display(),
        arch.name()
    );
    p
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A kernel and its modules, unpacked from Debian's cloud kernel package.
pub struct Kernel {
    pub image: PathBuf,
    /// `lib/modules/<version>`.
    pub modules: PathBuf,
}

/// Debian's name for `arch`, and whether packages for it need `:arch` on this host.
fn qualified(arch: Arch, pkg: &str) -> String {
    if arch == Arch::host() {
        pkg.to_string()
    } else {
        format!("{pkg}:{}", arch.debian())
    }
}

/// Fetches the Debian package `pkg` for `arch` with `apt-get download` and unpacks it
/// under `target/qemu/<arch>/<dir>`, unless that is there already; its root. Concurrent
/// callers wait on a lock file. A meta package (`linux-image-cloud-arm64`) is followed to
/// the package it depends on.
fn debian_package(arch: Arch, pkg: &str, follow_meta: bool, dir: &str) -> PathBuf {
    let root = target_dir().join("qemu").join(arch.name());
    std::fs::create_dir_all(&root).unwrap();
    let lock = std::fs::File::create(root.join(format!("{dir}.lock"))).unwrap();
    rustix::fs::flock(&lock, rustix::fs::FlockOperation::LockExclusive).unwrap();
    let unpacked = root.join(dir);
    if unpacked.join("done").exists() {
        return unpacked;
    }
    if arch != Arch::host() {
        let foreign = run(Command::new("dpkg").arg("--print-foreign-architectures"));
        assert!(
            foreign.lines().any(|l| l == arch.debian()),
            "dpkg does not know the {} architecture: `./bootstrap.sh deps` adds it",
            arch.debian()
        );
    }
    let _ = std::fs::remove_dir_all(&unpacked);
    let work = root.join(format!("{dir}.download"));
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work).unwrap();
    let mut pkg = qualified(arch, pkg);
    let policy = |pkg: &str| run(Command::new("apt-cache").args(["policy", pkg]));
    if !policy(&pkg).contains("Candidate: ") || policy(&pkg).contains("Candidate: (none)") {
        // No package lists yet on this machine.
        run(Command::new("apt-get").args(["update", "-q"]));
    }
    if follow_meta {
        let deps = run(Command::new("apt-cache").args(["depends", &pkg]));
        let real = deps
            .lines()
            .find_map(|l| l.trim().strip_prefix("Depends: "))
            .unwrap_or_else(|| panic!("no package behind {pkg}: {deps}"))
            .split(':')
            .next()
            .unwrap()
            .to_string();
        pkg = qualified(arch, &real);
    }
    run(Command::new("apt-get")
        .args(["download", "-q", &pkg])
        .current_dir(&work));
    let deb = std::fs::read_dir(&work)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "deb"))
        .expect("apt-get download left no .deb");
    run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&unpacked));
    std::fs::remove_dir_all(&work).unwrap();
    std::fs::write(unpacked.join("done"), &pkg).unwrap();
    unpacked
}

impl Kernel {
    /// Debian's cloud kernel for `arch`, fetched once.
    pub fn get(arch: Arch) -> Kernel {
        let unpacked = debian_package(
            arch,
            &format!("linux-image-cloud-{}", arch.debian()),
            true,
            "kernel",
        );
        let boot = unpacked.join("boot");
        let image = std::fs::read_dir(&boot)
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .find(|p| {
                p.file_name()
                    .unwrap()
                    .to_string_lossy()
                    .starts_with("vmlinuz-")
            })
            .expect("no vmlinuz in the kernel package");
        let modules = std::fs::read_dir(unpacked.join("lib/modules"))
            .unwrap()
            .flatten()
            .next()
            .expect("no lib/modules in the kernel package")
            .path();
        Kernel { image, modules }
    }

    /// The module files to load for `names`, dependencies first.
    /// Modules built into the kernel (`modules.builtin`) are left out.
    pub fn modules_for(&self, names: &[&str]) -> Vec<PathBuf> {
        let mut index = BTreeMap::new();
        index_modules(&self.modules.join("kernel"), &mut index);
        let builtin: Vec<String> = std::fs::read_to_string(self.modules.join("modules.builtin"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.rsplit('/').next()?.strip_suffix(".ko"))
            .map(|m| m.replace('-', "_"))
            .collect();
        let mut order = Vec::new();
        for n in names {
            let n = n.replace('-', "_");
            if !builtin.contains(&n) {
                visit(&index, &n, &mut order);
            }
        }
        fn visit(index: &BTreeMap<String, PathBuf>, name: &str, order: &mut Vec<PathBuf>) {
            let path = index.get(name).unwrap_or_else(|| {
                panic!("kernel module {name} is neither in the package nor built in")
            });
            if order.contains(path) {
                return;
            }
            for dep in module_depends(path) {
                visit(index, &dep, order);
            }
            order.push(path.clone());
        }
        order
    }
}

fn index_modules(dir: &Path, index: &mut BTreeMap<String, PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if e.file_type().unwrap().is_dir() {
            index_modules(&p, index);
        } else if let Some(stem) = p.file_name().unwrap().to_str().unwrap().strip_suffix(".ko") {
            index.insert(stem.replace('-', "_"), p);
        }
    }
}

/// A module's `depends=` entry from its .modinfo strings.
fn module_depends(path: &Path) -> Vec<String> {
    let bytes = std::fs::read(path).unwrap();
    let key = b"\0depends=";
    let Some(at) = bytes.windows(key.len()).position(|w| w == key) else {
        return Vec::new();
    };
    let rest = &bytes[at + key.len()..];
    let end = rest.iter().position(|&b| b == 0).unwrap();
    String::from_utf8_lossy(&rest[..end])
        .split(',')
        .filter(|s| !s.is_empty())
        .map(|s| s.replace('-', "_"))
        .collect()
}

/// A newc ("070701") cpio archive, the format the kernel unpacks as initramfs.
#[derive(Default)]
pub struct Cpio {
    out: Vec<u8>,
    ino: u32,
}

impl Cpio {
    fn entry(&mut self, path: &str, mode: u32, data: &[u8]) {
        self.ino += 1;
        let name_len = path.len() + 1;
        let fields = [
            self.ino,
            mode,
            0,
            0,
            1,
            0,
            data.len() as u32,
            0,
            0,
            0,
            0,
            name_len as u32,
            0,
        ];
        self.out.extend_from_slice(b"070701");
        for f in fields {
            self.out.extend_from_slice(format!("{f:08x}").as_bytes());
        }
        self.out.extend_from_slice(path.as_bytes());
        self.out.push(0);
        self.pad();
        self.out.extend_from_slice(data);
        self.pad();
    }

    fn pad(&mut self) {
        while self.out.len() % 4 != 0 {
            self.out.push(0);
        }
    }

    pub fn dir(&mut self, path: &str) {
        self.entry(path, 0o040_755, &[]);
    }

    pub fn file(&mut self, path: &str, mode: u32, data: &[u8]) {
        self.entry(path, 0o100_000 | mode, data);
    }

    pub fn symlink(&mut self, path: &str, target: &str) {
        self.entry(path, 0o120_777, target.as_bytes());
    }

    pub fn finish(mut self) -> Vec<u8> {
        self.entry("TRAILER!!!", 0, &[]);
        self.out
    }
}

/// The first init: everything into a tmpfs, then switch_root there.
const STAGE1: &str = r#"#!/bin/busybox sh
/bin/busybox mkdir -p /proc /newroot
/bin/busybox mount -t proc proc /proc
/bin/busybox mount -t tmpfs -o mode=0755 root /newroot
for e in /*; do
    case "$e" in /proc|/newroot|/init) ;; *) /bin/busybox cp -a "$e" /newroot/ ;; esac
done
/bin/busybox cp /stage2 /newroot/init
/bin/busybox umount /proc
exec /bin/busybox switch_root /newroot /init
echo "stage1: switch_root failed"
"#;

/// The second init: mounts, modules, then the control loop on the virtio port `ctl`.
const STAGE2: &str = r#"#!/bin/busybox sh
/bin/busybox mkdir -p /usr/bin /usr/sbin /sbin
/bin/busybox --install -s
export PATH=/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
mkdir -p /proc /sys /dev /run /tmp /var/lib /var/log /etc
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts /dev/shm
mount -t devpts -o newinstance,ptmxmode=0666 devpts /dev/pts
mount -t tmpfs -o mode=1777 shm /dev/shm
mount -t tmpfs -o mode=0755 run /run
mount -t tmpfs -o mode=1777 tmp /tmp
mount -t cgroup2 cgroup2 /sys/fs/cgroup
echo "+cpu +cpuset +io +memory +pids" > /sys/fs/cgroup/cgroup.subtree_control
[ -f /etc/hostname ] && hostname "$(cat /etc/hostname)"
echo "127.0.0.1 localhost" > /etc/hosts
for m in $(cat /lib/modules/order); do
    insmod "/lib/modules/$m" || echo "stage2: insmod $m failed"
done
ip link set lo up
if [ -f /etc/ip ]; then
    ip addr add "$(cat /etc/ip)" dev eth0 && ip link set eth0 up || echo "stage2: no eth0"
fi
port=
for i in 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20; do
    for p in /sys/class/virtio-ports/*; do
        [ "$(cat "$p/name" 2>/dev/null)" = ctl ] && port=/dev/${p##*/}
    done
    [ -n "$port" ] && [ -e "$port" ] && break
    sleep 0.1
done
[ -n "$port" ] || { echo "stage2: no control port"; poweroff -f; }
[ -x /etc/boot.sh ] && /etc/boot.sh
exec 3<>"$port"
echo "@@READY" >&3
while read -r id cmd <&3; do
    echo "$cmd" | base64 -d > /tmp/.cmd
    echo "@@ $id: $(head -c 160 /tmp/.cmd | tr '\n' ' ')" > /dev/console
    sh /tmp/.cmd > /tmp/.out 2>&1 < /dev/null
    rc=$?
    echo "@@ $id exited $rc" > /dev/console
    { echo "@@OUT $id"; base64 < /tmp/.out; echo "@@END $id $rc"; } >&3
done
echo "stage2: control channel closed"
poweroff -f
"#;

/// A VM's network card: a tap device on a bridge in a namespace (see `Net::tap`).
pub struct VmNet {
    pub netns: String,
    pub tap: String,
    /// `10.x.y.z/24`, given to the guest's eth0.
    pub cidr: String,
    pub index: u8,
}

/// What a VM is made of.
pub struct VmSpec {
    pub net: Option<VmNet>,
    pub name: String,
    pub arch: Arch,
    pub mem_mib: u32,
    pub cpus: u32,
    /// Kernel modules loaded at boot (their dependencies are found and loaded first).
    pub modules: Vec<&'static str>,
    /// Files placed in the VM: guest path (absolute), contents, mode.
    pub files: Vec<(String, Vec<u8>, u32)>,
}

impl VmSpec {
    pub fn new(name: &str) -> VmSpec {
        VmSpec {
            name: name.into(),
            arch: Arch::from_env(),
            mem_mib: 768,
            cpus: 2,
            modules: vec!["overlay"],
            files: Vec::new(),
            net: None,
        }
    }

    /// A network card on `net`'s bridge (the tap device must exist).
    pub fn lan(mut self, net: VmNet) -> VmSpec {
        self.modules.push("virtio_net");
        self.files.push((
            "/etc/ip".into(),
            format!("{}\n", net.cidr).into_bytes(),
            0o644,
        ));
        self.net = Some(net);
        self
    }

    pub fn file(mut self, guest: &str, contents: Vec<u8>, mode: u32) -> VmSpec {
        self.files.push((guest.into(), contents, mode));
        self
    }

    fn initramfs(&self, kernel: &Kernel, busybox: &Path, swarmlet: &Path) -> Vec<u8> {
        let mut c = Cpio::default();
        let mut dirs = std::collections::BTreeSet::new();
        let mut add_dirs = |c: &mut Cpio, path: &str| {
            let mut at = String::new();
            let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
            for part in &parts[..parts.len() - 1] {
                if !at.is_empty() {
                    at.push('/');
                }
                at.push_str(part);
                if dirs.insert(at.clone()) {
                    c.dir(&at);
                }
            }
        };
        add_dirs(&mut c, "bin/busybox");
        c.file("bin/busybox", 0o755, &std::fs::read(busybox).unwrap());
        c.file("init", 0o755, STAGE1.as_bytes());
        c.file("stage2", 0o755, STAGE2.as_bytes());
        add_dirs(&mut c, "usr/local/bin/swarmlet");
        c.file(
            "usr/local/bin/swarmlet",
            0o755,
            &std::fs::read(swarmlet).unwrap(),
        );
        add_dirs(&mut c, "etc/hostname");
        c.file("etc/hostname", 0o644, format!("{}\n", self.name).as_bytes());
        add_dirs(&mut c, "lib/modules/order");
        let mut order = String::new();
        // The control channel's transport first, then what the test asked for.
        let mut wanted = vec!["virtio_pci", "virtio_console"];
        wanted.extend_from_slice(&self.modules);
        for m in kernel.modules_for(&wanted) {
            let name = m.file_name().unwrap().to_str().unwrap().to_string();
            c.file(
                &format!("lib/modules/{name}"),
                0o644,
                &std::fs::read(&m).unwrap(),
            );
            order.push_str(&name);
            order.push('\n');
        }
        c.file("lib/modules/order", 0o644, order.as_bytes());
        for (path, data, mode) in &self.files {
            let path = path.trim_start_matches('/');
            add_dirs(&mut c, path);
            c.file(path, *mode, data);
        }
        c.finish()
    }
}

/// A running VM. Dropping it kills QEMU and removes its directory; if the test is
/// panicking, the kernel console is printed first.
pub struct Vm {
    pub name: String,
    pub dir: PathBuf,
    child: Child,
    reader: BufReader<UnixStream>,
    writer: UnixStream,
    next_id: u64,
}

impl Vm {
    /// Boots the VM and waits until its control channel answers.
    pub fn boot(spec: VmSpec) -> Vm {
        let arch = spec.arch;
        let kernel = Kernel::get(arch);
        let busybox = busybox_for(arch);
        let swarmlet = swarmlet_binary(arch);
        let dir =
            std::env::temp_dir().join(format!("swarmlet-vm-{}-{}", std::process::id(), spec.name));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("initrd.cpio"),
            spec.initramfs(&kernel, &busybox, &swarmlet),
        )
        .unwrap();
        let sock = dir.join("ctl.sock");
        // With a network card, QEMU runs in the namespace that holds its tap device.
        let mut cmd = match &spec.net {
            Some(n) => {
                let mut c = Command::new("nsenter");
                c.arg(format!("--net=/var/run/netns/{}", n.netns))
                    .arg(arch.qemu());
                c
            }
            None => Command::new(arch.qemu()),
        };
        if let Some(n) = &spec.net {
            cmd.arg("-netdev")
                .arg(format!(
                    "tap,id=n0,ifname={},script=no,downscript=no",
                    n.tap
                ))
                .arg("-device")
                .arg(format!(
                    "virtio-net-pci,netdev=n0,mac=52:54:00:5a:00:{:02x}",
                    n.index
                ));
        }
        match arch {
            Arch::X86_64 => cmd.args(["-M", "q35", "-cpu", "max"]),
            // A Raspberry Pi 4's core. (`max` would add pointer authentication, which is
            // slow to emulate.)
            Arch::Aarch64 => cmd.args(["-M", "virt", "-cpu", "cortex-a72"]),
        };
        cmd.args([
            "-accel",
            "tcg",
            "-nodefaults",
            "-no-user-config",
            "-no-reboot",
        ])
        .args(["-display", "none", "-monitor", "none"])
        .args(["-m", &spec.mem_mib.to_string()])
        .args(["-smp", &spec.cpus.to_string()])
        .arg("-kernel")
        .arg(&kernel.image)
        .arg("-initrd")
        .arg(dir.join("initrd.cpio"))
        .arg("-append")
        .arg(format!(
            "console={} panic=-1 rdinit=/init loglevel=4",
            arch.console()
        ))
        .arg("-serial")
        .arg(format!("file:{}", dir.join("console.log").display()))
        .args(["-device", "virtio-serial-pci"])
        .arg("-chardev")
        .arg(format!(
            "socket,id=ctl,path={},server=on,wait=off",
            sock.display()
        ))
        .args(["-device", "virtserialport,chardev=ctl,name=ctl"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("qemu.log")).unwrap());
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", arch.qemu()));
        let deadline = Instant::now() + Duration::from_secs(30);
        let stream = loop {
            if let Ok(s) = UnixStream::connect(&sock) {
                break s;
            }
            if let Some(status) = child.try_wait().unwrap() {
                panic!(
                    "{} exited ({status}): {}",
                    arch.qemu(),
                    std::fs::read_to_string(dir.join("qemu.log")).unwrap_or_default()
                );
            }
            assert!(Instant::now() < deadline, "QEMU opened no control socket");
            std::thread::sleep(Duration::from_millis(20));
        };
        let mut vm = Vm {
            name: spec.name,
            dir,
            child,
            reader: BufReader::new(stream.try_clone().unwrap()),
            writer: stream,
            next_id: 0,
        };
        // Booting under emulation: seconds, more on a loaded machine.
        vm.expect_line(Duration::from_secs(180), |l| l == "@@READY");
        vm
    }

    fn expect_line(&mut self, within: Duration, want: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "{}: nothing expected on the control channel within {within:?}",
                self.name
            );
            self.reader.get_ref().set_read_timeout(Some(left)).unwrap();
            let mut line = String::new();
            match self.reader.read_line(&mut line) {
                Ok(0) => panic!("{}: control channel closed", self.name),
                Ok(_) => {
                    let line = line.trim_end().to_string();
                    if want(&line) {
                        return line;
                    }
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(e) => panic!("{}: control channel: {e}", self.name),
            }
        }
    }

    /// Runs `script` with the VM's `sh`; its exit code and its stdout and stderr together.
    pub fn exec(&mut self, script: &str, within: Duration) -> (i32, String) {
        self.next_id += 1;
        let id = self.next_id;
        let encoded = swarmlet::image::pull::base64_encode(script.as_bytes());
        writeln!(self.writer, "{id} {encoded}").unwrap();
        self.expect_line(within, |l| l == format!("@@OUT {id}"));
        let mut body = String::new();
        let end = format!("@@END {id} ");
        let code = loop {
            let line = self.expect_line(within, |_| true);
            if let Some(rc) = line.strip_prefix(&end) {
                break rc.parse().unwrap();
            }
            body.push_str(&line);
        };
        let out = swarmlet::image::pull::base64_decode(&body)
            .unwrap_or_else(|| panic!("{}: output is not base64: {body}", self.name));
        (code, String::from_utf8_lossy(&out).into_owned())
    }

    /// [`Vm::exec`] that must succeed (within two minutes); its output.
    pub fn ok(&mut self, script: &str) -> String {
        let (code, out) = self.exec(script, Duration::from_secs(120));
        assert_eq!(code, 0, "{}: `{script}` exited {code}: {out}", self.name);
        out
    }

    /// Runs `script` until it exits 0, every 200 ms, for at most `within`; its output.
    pub fn wait_for(&mut self, script: &str, within: Duration) -> String {
        let deadline = Instant::now() + within;
        loop {
            let (code, out) = self.exec(script, within);
            if code == 0 {
                return out;
            }
            assert!(
                Instant::now() < deadline,
                "{}: `{script}` still exits {code} after {within:?}: {out}",
                self.name
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Starts the daemon with its defaults (/var/lib/swarmlet, /run/swarmlet) and waits
    /// for its socket. Its output goes to the console, which the host keeps even when the
    /// guest hangs or dies; its pid to `/run/swarmlet-daemon.pid`.
    pub fn start_daemon(&mut self) {
        self.ok(
            "swarmlet daemon >/dev/console 2>&1 & echo $! > /run/swarmlet-daemon.pid
             for i in $(seq 300); do [ -S /run/swarmlet/swarmlet.sock ] && exit 0; sleep 0.1; done
             exit 1",
        );
    }

    /// Pulls the plug: QEMU is killed, the guest gets no chance to say anything.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn console(&self) -> String {
        std::fs::read_to_string(self.dir.join("console.log")).unwrap_or_default()
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- console of {}:\n{}", self.name, self.console());
            if let Ok(q) = std::fs::read_to_string(self.dir.join("qemu.log")) {
                eprintln!("--- qemu log of {}:\n{q}", self.name);
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// busybox-static for `arch`: the host's own, or Debian's package for another arch,
/// fetched once. Guests and the test images they run use it.
pub fn busybox_for(arch: Arch) -> PathBuf {
    if arch == Arch::host() {
        return PathBuf::from(super::image::BUSYBOX);
    }
    debian_package(arch, "busybox-static", false, "busybox").join("bin/busybox")
}

/// The kernel modules a swarmlet node loads at boot: container storage, and what the
/// overlay network, service load balancing and the routing mesh use.
pub const NODE_MODULES: &[&str] = &[
    "overlay",
    "tun",
    "bridge",
    "br_netfilter",
    "veth",
    "vxlan",
    "ip_vs",
    "ip_vs_rr",
    "ip_vs_wrr",
    "nf_conntrack",
    "nf_nat",
    "nf_tables",
    "nft_chain_nat",
    "nft_ct",
    "nft_masq",
    // The expressions the VIP balancer and the routing mesh use (a system with modprobe
    // loads them on first use; the guests' init loads only what it is given).
    "nft_nat",
    "nft_numgen",
    "nft_fib_ipv4",
    "nft_reject_ipv4",
];

/// Guest `i`'s address on a cluster's bridge.
pub fn node_addr(i: usize) -> String {
    format!("10.79.0.{}", i + 1)
}

/// Virtual machines that are swarmlet nodes: VM `i` is named `node<i>`, has 512 MiB and
/// one vCPU (a small edge box), sits at [`node_addr`]`(i)` on one bridge inside a
/// namespace made for it (no uplink), loads [`NODE_MODULES`], and runs the daemon, whose
/// output goes to the console. Dropping it kills the VMs, printing every console if the
/// test is failing, then removes the namespace.
pub struct Cluster {
    pub vms: Vec<Vm>,
    net: super::Net,
}

impl Cluster {
    /// `n` nodes, not yet in a cluster.
    pub fn boot(n: usize) -> Cluster {
        Cluster::boot_with(n, |_, spec| spec)
    }

    /// [`Cluster::boot`] with each VM's spec changed by `f(i, spec)` (files, memory).
    pub fn boot_with(n: usize, f: impl Fn(usize, VmSpec) -> VmSpec + Sync) -> Cluster {
        let mut c = Cluster::boot_vms(n, f);
        c.start_daemons();
        c
    }

    /// [`Cluster::boot_with`] without starting the daemons.
    pub fn boot_vms(n: usize, f: impl Fn(usize, VmSpec) -> VmSpec + Sync) -> Cluster {
        let mut net = super::Net::new("qv");
        let specs: Vec<VmSpec> = (0..n)
            .map(|i| {
                let (netns, tap) = net.tap(i);
                let mut s = VmSpec::new(&format!("node{i}")).lan(VmNet {
                    netns,
                    tap,
                    cidr: format!("{}/24", node_addr(i)),
                    index: u8::try_from(i).unwrap(),
                });
                s.mem_mib = 512;
                s.cpus = 1;
                s.modules.extend_from_slice(NODE_MODULES);
                f(i, s)
            })
            .collect();
        // Side by side: each boot takes seconds under emulation.
        let vms = std::thread::scope(|s| {
            let handles: Vec<_> = specs
                .into_iter()
                .map(|spec| s.spawn(move || Vm::boot(spec)))
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap())
                .collect::<Vec<_>>()
        });
        Cluster { vms, net }
    }

    /// [`Vm::start_daemon`] on every node.
    pub fn start_daemons(&mut self) {
        for vm in &mut self.vms {
            vm.start_daemon();
        }
    }

    /// `swarmlet init` on node 0, then `swarmlet join <token> <node 0>:2377` on the
    /// others, the way a user types them: the first three nodes are managers, the rest
    /// workers. Returns once node 0 lists every node Ready.
    pub fn form(&mut self) {
        self.vms[0].ok("swarmlet init");
        let token = |vm: &mut Vm, role: &str| {
            vm.ok(&format!("swarmlet join-token {role} -q"))
                .trim()
                .to_string()
        };
        let manager = token(&mut self.vms[0], "manager");
        let worker = token(&mut self.vms[0], "worker");
        let leader = format!("{}:2377", node_addr(0));
        for (i, vm) in self.vms.iter_mut().enumerate().skip(1) {
            let t = if i < 3 { &manager } else { &worker };
            vm.ok(&format!("swarmlet join {t} {leader}"));
        }
        let n = self.vms.len();
        self.vms[0].wait_for(
            &format!("[ \"$(swarmlet node ls | grep -c ' Ready ')\" = {n} ]"),
            Duration::from_secs(60),
        );
    }

    /// Pulls VM `i`'s plug.
    pub fn kill(&mut self, i: usize) {
        self.vms[i].kill();
    }

    /// Cuts VM `i`'s link to the bridge (the VM keeps running, alone).
    pub fn cut(&self, i: usize) {
        self.net.set_tap_link(i, false);
    }

    /// Restores VM `i`'s link.
    pub fn restore(&self, i: usize) {
        self.net.set_tap_link(i, true);
    }
}
