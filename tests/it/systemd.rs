//! The service as systemd runs it: the units verify and score, the daemon
//! speaks the notify protocol, it works with only the unit's capabilities,
//! and a mount namespace (what PrivateTmp=, ProtectSystem= and friends set
//! up) would hide the export from the host, which is why the unit uses none.

use crate::common::*;
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

const UNIT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/systemd/workcopy.service");

fn approve_a_case(env: &Env, case_ref: &str) {
    env.cli(&["case", "open", case_ref, "--requester", ALICE, "GDB-0001"]).ok();
    env.cli(&["case", "approve", case_ref]).ok();
}

#[test]
fn the_unit_verifies_and_its_exposure_stays_low() {
    let tmp = tempfile::tempdir().unwrap();
    // The unit as installed: ExecStart pointing at a real binary, man page present.
    let unit = std::fs::read_to_string(UNIT).unwrap().replace("/usr/local/bin/workcopy", BIN);
    let path = tmp.path().join("workcopy.service");
    std::fs::write(&path, unit).unwrap();
    verify_units(tmp.path(), &[&path]);
    let (level, line) = exposure(&path);
    assert!(level <= 4.0, "exposure {level} (was 3.7): {line}");
    // No option that would put the daemon in its own mount namespace.
    for opt in [
        "PrivateTmp=",
        "ProtectSystem=",
        "ProtectHome=",
        "PrivateDevices=",
        "PrivateMounts=",
        "ProtectKernelTunables=",
    ] {
        assert!(
            !std::fs::read_to_string(UNIT).unwrap().lines().any(|l| l.starts_with(opt)),
            "{opt} would hide the mount"
        );
    }
}

/// The metrics service and its timer verify together, the service's
/// exposure is low, and it can write nothing but the textfile directory.
#[test]
fn the_metrics_units_verify_and_are_hardened() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("systemd");
    let service = tmp.path().join("workcopy-metrics.service");
    let text = std::fs::read_to_string(dir.join("workcopy-metrics.service")).unwrap();
    std::fs::write(&service, text.replace("/usr/local/bin/workcopy", BIN)).unwrap();
    let timer = tmp.path().join("workcopy-metrics.timer");
    std::fs::copy(dir.join("workcopy-metrics.timer"), &timer).unwrap();
    verify_units(tmp.path(), &[&service, &timer]);
    let (level, line) = exposure(&service);
    assert!(level <= 1.5, "exposure {level} (was 0.9): {line}");

    let unit = std::fs::read_to_string(dir.join("workcopy-metrics.service")).unwrap();
    let lines: Vec<&str> = unit.lines().collect();
    for want in [
        "ProtectSystem=strict",
        "ReadWritePaths=-/var/lib/prometheus/node-exporter",
        "CapabilityBoundingSet=",
        "PrivateNetwork=yes",
        "RestrictAddressFamilies=AF_UNIX",
    ] {
        assert!(lines.contains(&want), "{want} missing");
    }
    assert!(
        unit.contains("--output /var/lib/prometheus/node-exporter/workcopy.prom"),
        "the default textfile path"
    );
    let timer = std::fs::read_to_string(dir.join("workcopy-metrics.timer")).unwrap();
    assert!(timer.lines().any(|l| l == "OnUnitActiveSec=15s"), "{timer}");
}

#[test]
fn the_daemon_speaks_the_notify_protocol() {
    let mut env = Env::new();
    let sock_path = env.root.join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    env.start_with(&[], &[("NOTIFY_SOCKET", sock_path.to_str().unwrap())]);
    let mut buf = [0u8; 4096];
    let recv = |buf: &mut [u8]| {
        let n = sock.recv(buf).expect("a notification within 10 s");
        String::from_utf8_lossy(&buf[..n]).to_string()
    };
    let ready = recv(&mut buf);
    assert!(ready.contains("READY=1") && ready.contains("STATUS="), "{ready}");
    assert!(env.mounted(), "READY=1 is sent only once the export is mounted");
    env.signal(nix::sys::signal::Signal::SIGHUP);
    assert!(recv(&mut buf).contains("RELOADING=1"));
    assert!(recv(&mut buf).contains("READY=1"));
    env.signal(nix::sys::signal::Signal::SIGTERM);
    let mut stopping = false;
    for _ in 0..5 {
        if recv(&mut buf).contains("STOPPING=1") {
            stopping = true;
            break;
        }
    }
    assert!(stopping);
    assert_eq!(env.stop(), Some(0));
    assert!(!env.mounted(), "stop unmounts");
}

#[test]
fn the_daemon_works_with_only_the_units_capabilities() {
    let mut env = Env::new();
    // A GDB file readable by its owner only: CAP_DAC_READ_SEARCH must suffice.
    let f = env.gdb_path("GDB-0001");
    std::os::unix::fs::chown(&f, Some(7777), Some(7777)).unwrap();
    chmod(&f, 0o400);
    env.start_with(
        &[
            "setpriv",
            "--bounding-set=-all,+sys_admin,+dac_read_search",
            "--inh-caps=-all",
            "--no-new-privs",
        ],
        &[],
    );
    env.import_catalog();
    approve_a_case(&env, "CAPS-1");
    let status = env.cli(&["status", "--json"]).ok().json();
    assert_eq!(status["mounted"], true, "{status}");
    assert!(status["read_path"].as_str().unwrap().contains("passthrough"), "{status}");
    let out = env.cli(&["case", "show", "CAPS-1", "--json"]).ok().json();
    let name = out["files"][0]["export_name"].as_str().unwrap().to_string();
    let out = Command::new("setpriv")
        .args([&format!("--reuid={UID_A1}"), &format!("--regid={UID_A1}"), "--clear-groups", "cat"])
        .arg(env.mnt.join("CAPS-1").join(&name))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(sha256_hex(&out.stdout), env.file("GDB-0001").sha256);
}

#[test]
fn a_private_mount_namespace_would_hide_the_export_from_the_host() {
    let mut env = Env::new();
    // What systemd does for PrivateTmp=, ProtectSystem=, ProtectHome= and the like.
    env.start_with(&["unshare", "--mount", "--propagation", "slave"], &[]);
    env.import_catalog();
    approve_a_case(&env, "NS-1");
    let inside = Command::new("nsenter")
        .args(["-t", &env.pid().to_string(), "-m", "ls"])
        .arg(env.mnt.join("NS-1"))
        .output()
        .unwrap();
    assert!(inside.status.success(), "inside the daemon's namespace the case is there");
    assert!(!is_mount(&env.mnt), "the host sees no mount at {}", env.mnt.display());
    assert!(!env.mnt.join("NS-1").exists(), "the host cannot see the case");
}

fn is_mount(p: &Path) -> bool {
    Command::new("mountpoint")
        .arg("-q")
        .arg(p)
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

#[test]
fn install_puts_everything_in_place_and_the_installed_unit_verifies() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("root");
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/install");
    let out = Command::new(script)
        .args(["--root", root.to_str().unwrap(), "--bin", BIN])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
    assert!(text.contains("Left for you to do"), "{text}");
    for f in [
        "usr/local/bin/workcopy",
        "usr/lib/systemd/system/workcopy.service",
        "usr/lib/sysusers.d/workcopy.conf",
        "usr/lib/tmpfiles.d/workcopy.conf",
        "etc/workcopy/workcopy.toml",
        "etc/workcopy/directory.toml",
        "usr/lib/workcopy/workcopy-ssh-gate",
        "usr/lib/workcopy/workcopy-pull",
        "usr/lib/workcopy/workcopy-unspring",
        "usr/local/share/man/man1/workcopy.1",
        "usr/local/share/man/man1/workcopy-case-open.1",
        "usr/share/bash-completion/completions/workcopy",
        "usr/share/doc/workcopy/OPERATIONS.md",
        "usr/share/doc/workcopy/sshd-workcopy-sftp.conf.example",
    ] {
        assert!(root.join(f).is_file(), "{f} was not installed");
    }
    // The example config parses as a config (the paths in it are absolute).
    let cfg = workcopy::config::Config::load(&root.join("etc/workcopy/workcopy.toml"));
    assert!(cfg.is_ok(), "{:?}", cfg.err());
    // A second install keeps the admin's files and adds .example beside them.
    std::fs::write(root.join("etc/workcopy/directory.toml"), "# mine\n").unwrap();
    let out = Command::new(script)
        .args(["--root", root.to_str().unwrap(), "--bin", BIN])
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(
        std::fs::read_to_string(root.join("etc/workcopy/directory.toml")).unwrap(),
        "# mine\n"
    );
    assert!(root.join("etc/workcopy/directory.toml.example").is_file());

    // The unit's documentation is installed where it points.
    let shipped = std::fs::read_to_string(UNIT).unwrap();
    let docs = shipped.lines().find_map(|l| l.strip_prefix("Documentation=")).unwrap();
    for d in docs.split_whitespace() {
        match d.strip_prefix("file://") {
            Some(p) => assert!(
                root.join(p.trim_start_matches('/')).is_file(),
                "Documentation= {d} is not installed"
            ),
            None => assert_eq!(d, "man:workcopy(1)"),
        }
    }
    // No path of the config is hard-coded in the unit or the tmpfiles snippet.
    let tmpfiles = std::fs::read_to_string(root.join("usr/lib/tmpfiles.d/workcopy.conf")).unwrap();
    for text in [&shipped, &tmpfiles] {
        assert!(
            !text
                .lines()
                .any(|l| !l.starts_with('#') && (l.contains("/srv") || l.starts_with("RequiresMountsFor="))),
            "{text}"
        );
    }

    // A unit in /etc/systemd/system (an earlier install's place) overrides the
    // shipped one: an unchanged copy goes, an edited one stays, with a warning.
    let etc_unit = root.join("etc/systemd/system/workcopy.service");
    std::fs::create_dir_all(etc_unit.parent().unwrap()).unwrap();
    std::fs::write(&etc_unit, &shipped).unwrap();
    let out = Command::new(script)
        .args(["--root", root.to_str().unwrap(), "--bin", BIN])
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(!etc_unit.exists(), "an unchanged copy in /etc is removed");
    let edited = shipped.replace("TimeoutStopSec=30", "TimeoutStopSec=90");
    std::fs::write(&etc_unit, &edited).unwrap();
    let out = Command::new(script)
        .args(["--root", root.to_str().unwrap(), "--bin", BIN])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(out.status.success(), "{err}");
    assert_eq!(
        std::fs::read_to_string(&etc_unit).unwrap(),
        edited,
        "an edited unit is never overwritten"
    );
    assert!(
        err.contains("overrides the shipped unit") && err.contains("systemctl edit workcopy"),
        "{err}"
    );
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(text.contains("drop-in (systemctl edit workcopy)"), "{text}");

    // The installed unit, with its binary where it says, verifies.
    let unit = std::fs::read_to_string(root.join("usr/lib/systemd/system/workcopy.service"))
        .unwrap()
        .replace("/usr/local/bin/workcopy", root.join("usr/local/bin/workcopy").to_str().unwrap());
    let path = tmp.path().join("workcopy.service");
    std::fs::write(&path, unit).unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .env("MANPATH", root.join("usr/local/share/man"))
        .output()
        .unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success() && text.trim().is_empty(), "{text}");
}

/// `serve` as the unit runs it, to its end (it must not start).
fn serve_until_exit(env: &Env) -> Out {
    let mut cmd = Command::new(BIN);
    cmd.arg("serve")
        .arg("--config")
        .arg(&env.config)
        .env_remove("NOTIFY_SOCKET")
        .env_remove("WORKCOPY_CONFIG")
        .env("NO_COLOR", "1")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    run_with_timeout(cmd, None, "workcopy serve")
}

#[test]
fn a_wrong_config_or_directory_ends_serve_with_status_78_and_the_reason() {
    // The unit tells systemd not to restart on 78.
    let unit = std::fs::read_to_string(UNIT).unwrap();
    assert!(unit.lines().any(|l| l == "RestartPreventExitStatus=78"), "{unit}");

    let env = Env::new();
    env.write_directory(&directory_toml("garbage [[\n"));
    serve_until_exit(&env).code(78).stderr_has(&env.directory.display().to_string());

    let env = Env::with(|o| o.extra_config = "colour = \"blue\"\n".into());
    serve_until_exit(&env).code(78).stderr_has("colour");

    let env = Env::new();
    let cfg = std::fs::read_to_string(&env.config).unwrap();
    write_file(
        &env.config,
        cfg.replace(&format!("staff_group = {STAFF_GID}"), "staff_group = \"no-such-group-here\"")
            .as_bytes(),
        0o644,
    );
    serve_until_exit(&env).code(78).stderr_has("staff_group");

    // What may work on the next start (here: gdb_root not there yet, as an
    // unmounted network filesystem) keeps the ordinary failure status.
    let env = Env::new();
    std::fs::rename(&env.gdb, env.root.join("gdb-elsewhere")).unwrap();
    serve_until_exit(&env).code(1).stderr_has("gdb_root");
}

#[test]
fn status_follows_every_state_change_at_once() {
    let mut env = Env::new();
    let sock_path = env.root.join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    env.start_with(&[], &[("NOTIFY_SOCKET", sock_path.to_str().unwrap())]);
    env.import_catalog();
    // The expiry timer runs every 60 s with the default case_ttl: the
    // statuses below come from the changes themselves.
    let mut buf = [0u8; 4096];
    let mut wait_for = |want: &str| {
        let mut seen = Vec::new();
        loop {
            let n = sock
                .recv(&mut buf)
                .unwrap_or_else(|e| panic!("no STATUS= with {want:?} within 10 s ({e}); saw {seen:?}"));
            let msg = String::from_utf8_lossy(&buf[..n]).to_string();
            if msg.contains("STATUS=") && msg.contains(want) {
                return;
            }
            seen.push(msg);
        }
    };
    wait_for("0 exported, 0 awaiting approval");
    env.cli(&["case", "open", "ST-1", "--requester", ALICE, "GDB-0001"]).ok();
    wait_for("0 exported, 1 awaiting approval");
    env.cli(&["case", "approve", "ST-1"]).ok();
    wait_for("1 exported, 0 awaiting approval, 0 staging");
    env.cli(&["case", "close", "ST-1", "--force", "--reason", "withdrawn"]).ok();
    wait_for("0 exported, 0 awaiting approval, 0 staging");
}

/// `systemd-analyze verify` of `units` says nothing and succeeds (with the
/// manual pages the units name written under `dir`).
#[track_caller]
fn verify_units(dir: &Path, units: &[&Path]) {
    let man = dir.join("man/man1");
    assert!(Command::new(BIN).arg("man").arg(&man).status().unwrap().success());
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .args(units)
        .env("MANPATH", dir.join("man"))
        .env("SYSTEMD_LOG_LEVEL", "notice")
        .output()
        .unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success() && text.trim().is_empty(), "systemd-analyze verify: {text}");
}

/// The overall exposure level `systemd-analyze security --offline` gives a
/// unit file, and the line that says it.
#[track_caller]
fn exposure(unit: &Path) -> (f64, String) {
    let out = Command::new("systemd-analyze")
        .args(["security", "--offline=true"])
        .arg(unit)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let line = text
        .lines()
        .find(|l| l.contains("Overall exposure level"))
        .unwrap_or_else(|| panic!("{text}"))
        .to_string();
    let level: f64 = line
        .split_whitespace()
        .find_map(|w| w.parse().ok())
        .unwrap_or_else(|| panic!("{line}"));
    (level, line)
}
