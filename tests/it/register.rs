//! The case register through the real daemon and CLI (no FUSE mount):
//! catalog, case open and verification, the lifecycle, roles, the case log,
//! expiry, SIGHUP, the control socket's robustness and restarts.

use crate::common::*;
use nix::sys::signal::Signal;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::Duration;

// ---------------------------------------------------------------- helpers

/// `case open REF --requester WHO DESCRIPTORS…` as root.
fn open(env: &Env, case_ref: &str, requester: &str, descriptors: &[&str]) -> Out {
    let mut args = vec!["case", "open", case_ref, "--requester", requester];
    args.extend_from_slice(descriptors);
    env.cli(&args)
}

/// Opens a verified case and approves it; returns when it is exported.
#[track_caller]
fn exported(env: &Env, case_ref: &str, requester: &str, descriptors: &[&str]) {
    open(env, case_ref, requester, descriptors).ok();
    env.cli(&["case", "approve", case_ref])
        .ok()
        .stdout_has(&format!("case {case_ref} exported"));
    assert_eq!(env.state_of(case_ref), "exported");
}

/// The catalog size `status --json` reports.
#[track_caller]
fn catalog_files(env: &Env) -> u64 {
    env.cli(&["status", "--json"]).ok().json()["catalog_files"].as_u64().unwrap()
}

/// The (sha256, extra) of a catalog file as `catalog show --json` reports it.
#[track_caller]
fn catalog_entry(env: &Env, descriptor: &str) -> serde_json::Value {
    let v = env.cli(&["catalog", "show", descriptor, "--json"]).ok().json();
    let files = v.as_array().unwrap();
    assert_eq!(files.len(), 1, "{v}");
    files[0].clone()
}

/// REFs listed by `case list --json` as `who`.
#[track_caller]
fn listed(env: &Env, who: Who) -> Vec<String> {
    let v = env.cli_as(who, &["case", "list", "--json"]).ok().json();
    v.as_array()
        .unwrap()
        .iter()
        .map(|c| c["case_ref"].as_str().unwrap().to_string())
        .collect()
}

// ---------------------------------------------------------------- catalog

#[test]
fn catalog_import_summary_and_idempotent_reimport() {
    let mut env = Env::new();
    env.start();
    let out = env.import_catalog();
    assert!(
        out.stdout.contains("imported 8 rows") && out.stdout.contains("8 added, 0 updated, 0 unchanged"),
        "{out}"
    );
    assert!(out.stdout.contains("the catalog holds 8 files"), "{out}");
    let again = env.import_catalog();
    assert!(
        again.stdout.contains("0 added, 0 updated, 8 unchanged") && again.stdout.contains("holds 8 files"),
        "{again}"
    );
    assert_eq!(catalog_files(&env), 8);
    // The extra column is kept.
    let f = catalog_entry(&env, "GDB-0001");
    assert!(f["extra"].as_str().unwrap().contains("SAMPLE-001"), "{f}");
}

#[test]
fn bad_catalog_is_refused_with_every_bad_line_and_nothing_imported() {
    let env = Env::ready();
    let sha = "ab".repeat(32);
    let at = "2025-04-01T08:00:00Z";
    let rows = [
        format!("GDB-0100\tnew/ok.fastq\t{DEPT_A1}\t10\t{sha}\t{at}\tS100"), // 2 fine
        format!("GDB-0101\tnew/../../etc/passwd\t{DEPT_A1}\t10\t{sha}\t{at}\tS"), // 3 ..
        format!("GDB-0102\t/etc/passwd\t{DEPT_A1}\t10\t{sha}\t{at}\tS"),     // 4 absolute
        format!("GDB-0103\tnew/c.fastq\t{DEPT_A1}\t10\tnot-a-sha\t{at}\tS"), // 5 bad sha
        format!("GDB-0104\tnew/d.fastq\tDEPT-NOPE\t10\t{sha}\t{at}\tS"),     // 6 department
        format!("GDB-0100\tnew/e.fastq\t{DEPT_A1}\t10\t{sha}\t{at}\tS"),     // 7 duplicate id
        format!("GDB-0105\tnew/f.fastq\t{DEPT_A1}\t10\t{sha}"),              // 8 field count
        format!("GDB-0106\tnew/g.fastq\t{DEPT_A1}\t10\t{sha}\t{at}\tS106"),  // 9 fine
    ];
    let text = format!("{CATALOG_HEADER}\n{}\n", rows.join("\n"));
    let path = env.write_catalog("bad.tsv", &text);
    let out = env.cli(&["catalog", "import", path.to_str().unwrap()]).fails().code(1);
    for line in 3..=8 {
        out.clone().stderr_has(&format!("line {line}:"));
    }
    let out = out.stderr_has("6 bad row(s)").stderr_has("nothing imported");
    assert!(!out.stderr.contains("line 9:"), "{out}");
    // The reasons are named.
    for word in ["'..'", "relative", "sha256", "DEPT-NOPE", "already on line 2", "field"] {
        out.clone().stderr_has(word);
    }
    // Nothing was imported, not even the good rows.
    assert_eq!(catalog_files(&env), 8);
    env.cli(&["catalog", "show", "GDB-0100"])
        .fails()
        .stderr_has("no catalog file matches");
    env.cli(&["catalog", "show", "GDB-0106"]).fails();
    env.cli(&["catalog", "show", "ok.fastq"]).fails();
}

#[test]
fn catalog_columns_in_any_order_and_update_by_file_id() {
    let env = Env::ready();
    // Another column order, a new file.
    let sha = "cd".repeat(32);
    let text = format!(
        "sha256\tsample_id\tdepartment\tsubmitted_at\tpath\tfile_id\tsize\n\
         {sha}\tS-NEW\t{DEPT_B1}\t2025-05-01T12:00:00+02:00\trun9/new R1.fastq\tGDB-0200\t1234\n"
    );
    let p = env.write_catalog("reordered.tsv", &text);
    env.cli(&["catalog", "import", p.to_str().unwrap()])
        .ok()
        .stdout_has("1 added, 0 updated, 0 unchanged")
        .stdout_has("holds 9 files");
    let f = catalog_entry(&env, "new R1.fastq");
    assert_eq!(f["file_id"], "GDB-0200");
    assert_eq!(f["path"], "run9/new R1.fastq");
    assert_eq!(f["department"], DEPT_B1);
    assert_eq!(f["size"], 1234);
    assert_eq!(f["sha256"], sha.as_str());
    assert!(f["extra"].as_str().unwrap().contains("S-NEW"), "{f}");
    env.cli(&["catalog", "show", "GDB-0200"]).ok().stdout_has("2025-05-01T10:00:00Z");

    // Update by file_id: a new sample_id for one file, a new path for another.
    let mut files = env.files.clone();
    files[0].sample_id = "RELABELLED".into();
    files[1].path = "run1/moved/S1_R2.fastq".into();
    let p = env.write_catalog("update.tsv", &catalog_tsv(&files));
    env.cli(&["catalog", "import", p.to_str().unwrap()])
        .ok()
        .stdout_has("0 added, 2 updated, 6 unchanged")
        .stdout_has("holds 9 files");
    assert!(catalog_entry(&env, "GDB-0001")["extra"].as_str().unwrap().contains("RELABELLED"));
    assert_eq!(catalog_entry(&env, "run1/moved/S1_R2.fastq")["file_id"], "GDB-0002");
    env.cli(&["catalog", "show", "run1/S1_R2.fastq"]).fails();
    // Import never removes a file: the reordered catalog's file is still there.
    catalog_entry(&env, "GDB-0200");
}

#[test]
fn catalog_cannot_change_a_file_held_by_an_open_case() {
    let env = Env::ready();
    open(&env, "HOLD-1", ALICE, &["GDB-0002"]).ok();
    let mut files = env.files.clone();
    files[1].sha256 = "ef".repeat(32); // GDB-0002 is on line 3
    let mut text = catalog_tsv(&files);
    text.push_str(&format!(
        "GDB-0300\tnew/x.fastq\t{DEPT_A1}\t5\t{}\t2025-01-01T00:00:00Z\tS\n",
        "12".repeat(32)
    ));
    let p = env.write_catalog("changed.tsv", &text);
    env.cli(&["catalog", "import", p.to_str().unwrap()])
        .fails()
        .stderr_has("line 3:")
        .stderr_has("HOLD-1")
        .stderr_has("GDB-0002");
    assert_eq!(catalog_entry(&env, "GDB-0002")["sha256"], env.file("GDB-0002").sha256.as_str());
    env.cli(&["catalog", "show", "GDB-0300"]).fails();
    // The extra columns of a held file may change.
    let mut relabelled = env.files.clone();
    relabelled[1].sample_id = "NEW-LABEL".into();
    let p2 = env.write_catalog("relabelled.tsv", &catalog_tsv(&relabelled));
    env.cli(&["catalog", "import", p2.to_str().unwrap()])
        .ok()
        .stdout_has("0 added, 1 updated, 7 unchanged");

    // Once the case is rejected the file is free again.
    env.cli(&["case", "reject", "HOLD-1", "--reason", "form withdrawn"]).ok();
    env.cli(&["catalog", "import", p.to_str().unwrap()])
        .ok()
        .stdout_has("1 added, 1 updated, 7 unchanged");
    assert_eq!(catalog_entry(&env, "GDB-0002")["sha256"], "ef".repeat(32).as_str());
}

#[test]
fn catalog_show_by_id_path_and_base_name_staff_only() {
    let env = Env::ready();
    for d in ["GDB-0005", "run2/sample two R1.fastq", "sample two R1.fastq"] {
        let out = env.cli(&["catalog", "show", d]).ok();
        assert!(
            out.stdout.contains("GDB-0005") && out.stdout.contains("run2/sample two R1.fastq"),
            "{out}"
        );
        assert!(out.stdout.contains(&env.file("GDB-0005").sha256), "{out}");
        assert!(!out.stdout.contains("files match"), "{out}");
    }
    let out = env
        .cli(&["catalog", "show", "reads.fastq.gz"])
        .ok()
        .stdout_has("GDB-0003")
        .stdout_has("GDB-0004")
        .stdout_has("run1/reads.fastq.gz")
        .stdout_has("run2/reads.fastq.gz")
        .stdout_has("2 files match");
    assert!(out.stdout.contains(DEPT_A1) && out.stdout.contains(DEPT_A2), "{out}");
    env.cli(&["catalog", "show", "nothing.fastq"]).fails().stderr_has("nothing.fastq");
    env.cli_as(Who::Staff, &["catalog", "show", "GDB-0001"])
        .ok()
        .stdout_has("run1/S1_R1.fastq");
    for who in [Who::Dept(UID_A1), Who::Dept(UID_B1), Who::Stranger] {
        let out = env.cli_as(who, &["catalog", "show", "GDB-0001"]).fails();
        assert!(out.stderr.contains("permission denied"), "{out}");
        assert!(!out.stdout.contains("run1/S1_R1.fastq"), "{out}");
    }
}

// ---------------------------------------------------------------- case open

#[test]
fn case_open_verified_report() {
    let env = Env::ready();
    let out = env
        .cli(&[
            "case",
            "open",
            "NGC-2026-0001",
            "--requester",
            ALICE,
            "--department",
            DEPT_A1,
            "--submitter",
            DEPT_A1,
            "GDB-0001",
            "run1/S1_R2.fastq",
            "S3.spring",
        ])
        .ok()
        .stdout_has("case NGC-2026-0001 (open), requester alice@a1.example, department DEPT-A1")
        .stdout_has("ok        GDB-0001: GDB-0001 run1/S1_R1.fastq -> S1_R1.fastq")
        .stdout_has("ok        run1/S1_R2.fastq: GDB-0002 run1/S1_R2.fastq -> S1_R2.fastq")
        .stdout_has("ok        S3.spring: GDB-0006 run1/S3.spring -> S3.spring")
        .stdout_has("verified: every file may be delivered");
    assert!(!out.stdout.contains("REFUSED"), "{out}");

    // A file of another department of the same group, a name with spaces,
    // and two files sharing a base name get distinct names with their file_id.
    let out = open(
        &env,
        "NGC-2026-0002",
        ALICE,
        &["sample two R1.fastq", "GDB-0003", "run2/reads.fastq.gz"],
    )
    .ok()
    .stdout_has("-> sample two R1.fastq")
    .stdout_has("-> GDB-0003__reads.fastq.gz")
    .stdout_has("-> GDB-0004__reads.fastq.gz");
    assert!(out.stdout.contains("verified"), "{out}");
    let v = env.case_json("NGC-2026-0002");
    assert_eq!(v["case"]["state"], "open");
    assert_eq!(v["case"]["verified"], true);
    assert_eq!(v["case"]["department"], DEPT_A1);
    let names: Vec<&str> = v["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["export_name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        ["sample two R1.fastq", "GDB-0003__reads.fastq.gz", "GDB-0004__reads.fastq.gz"]
    );
    assert_eq!(env.events("NGC-2026-0002"), ["opened"]);
}

#[test]
fn case_open_refusals_name_every_failing_descriptor() {
    let env = Env::ready();
    // Not found.
    open(&env, "R-NF", ALICE, &["GDB-0001", "nope.fastq"])
        .fails()
        .stdout_has("ok        GDB-0001")
        .stdout_has("REFUSED   nope.fastq: not found in the GDB catalog")
        .stdout_has("NOT verified")
        .stderr_has("failed verification");
    // Ambiguous, with the candidates.
    open(&env, "R-AMB", ALICE, &["reads.fastq.gz"])
        .fails()
        .stdout_has("REFUSED   reads.fastq.gz: ambiguous, matches 2 files")
        .stdout_has("GDB-0003 (run1/reads.fastq.gz, DEPT-A1)")
        .stdout_has("GDB-0004 (run2/reads.fastq.gz, DEPT-A2)");
    // Not authorized: a group B file for a group A requester.
    open(&env, "R-AUTH", ALICE, &["GDB-0007"])
        .fails()
        .stdout_has("REFUSED   GDB-0007: not authorized")
        .stdout_has("DEPT-B1");
    // ... and the other way round.
    open(&env, "R-AUTH2", BERT, &["GDB-0001", "B1.spring"])
        .fails()
        .stdout_has("REFUSED   GDB-0001: not authorized")
        .stdout_has("ok        B1.spring");
    // Duplicate: the same file twice, by id and by path; the same text twice.
    open(&env, "R-DUP", ALICE, &["GDB-0001", "run1/S1_R1.fastq", "GDB-0001"])
        .fails()
        .stdout_has("REFUSED   run1/S1_R1.fastq: duplicate of line 1")
        .stdout_has("REFUSED   GDB-0001: duplicate of line 1");
    // Requester unknown.
    open(&env, "R-WHO", "mallory@nowhere.example", &["GDB-0001"])
        .fails()
        .stdout_has("REFUSED   request: requester mallory@nowhere.example is not in the directory");
    // --department does not match the requester.
    env.cli(&["case", "open", "R-DEPT", "--requester", ALICE, "--department", DEPT_A2, "GDB-0001"])
        .fails()
        .stdout_has("REFUSED   request: requester alice@a1.example belongs to DEPT-A1, not to the stated department DEPT-A2");
    // --submitter does not match the file's submitter.
    env.cli(&["case", "open", "R-SUB", "--requester", ALICE, "--submitter", DEPT_A2, "GDB-0001"])
        .fails()
        .stdout_has("REFUSED   GDB-0001: GDB-0001 was submitted by DEPT-A1, the request states DEPT-A2");
    // --submitter in another group.
    env.cli(&["case", "open", "R-SUB2", "--requester", ALICE, "--submitter", DEPT_B1, "GDB-0001"])
        .fails()
        .stdout_has("not in the same user group");
    // No files at all.
    open(&env, "R-EMPTY", ALICE, &[]).fails().stdout_has("names no files");

    // Every failed case is registered (open, not verified) and can never be approved.
    for r in [
        "R-NF", "R-AMB", "R-AUTH", "R-AUTH2", "R-DUP", "R-WHO", "R-DEPT", "R-SUB", "R-SUB2", "R-EMPTY",
    ] {
        let v = env.case_json(r);
        assert_eq!(v["case"]["state"], "open", "{r}: {v}");
        assert_eq!(v["case"]["verified"], false, "{r}: {v}");
        env.cli(&["case", "approve", r]).fails().stderr_has("can never be approved");
        assert_eq!(env.state_of(r), "open");
        assert!(!env.staging_dir(r).exists());
    }
    // A failed case can be rejected.
    env.cli(&["case", "reject", "R-NF", "--reason", "file not in the GDB"]).ok();
    assert_eq!(env.state_of("R-NF"), "rejected");
    env.cli(&["case", "approve", "R-NF"]).fails();
}

#[test]
fn case_open_bad_ref_and_ref_reuse() {
    let env = Env::ready();
    for bad in ["bad/ref", "x y", ".hidden", &"A".repeat(65), "æøå"] {
        env.cli(&["case", "open", bad, "--requester", ALICE, "GDB-0001"])
            .fails()
            .stderr_has("case reference");
    }
    env.cli(&["case", "list", "--json"]).ok().stdout_has("[]");
    open(&env, "NGC-7", ALICE, &["GDB-0001"]).ok();
    open(&env, "NGC-7", ALICE, &["GDB-0002"]).fails().stderr_has("NGC-7 already exists");
    // The original case is unchanged.
    let v = env.case_json("NGC-7");
    assert_eq!(v["files"].as_array().unwrap().len(), 1);
    assert_eq!(v["files"][0]["file"]["file_id"], "GDB-0001");
    // Even a failed case keeps its REF.
    open(&env, "NGC-8", ALICE, &["nope"]).fails();
    open(&env, "NGC-8", ALICE, &["GDB-0001"]).fails().stderr_has("already exists");
    // Unknown cases.
    env.cli(&["case", "show", "NGC-404"]).fails().stderr_has("no case NGC-404");
    env.cli(&["case", "approve", "NGC-404"]).fails().stderr_has("no case NGC-404");
}

#[test]
fn case_open_over_the_limit() {
    let env = Env::ready_with(|o| o.max_files_per_case = Some(2));
    open(&env, "LIM-1", ALICE, &["GDB-0001", "GDB-0002", "GDB-0006"])
        .fails()
        .stdout_has("ok        GDB-0001")
        .stdout_has("ok        GDB-0002")
        .stdout_has("REFUSED   GDB-0006: over the limit of 2 files per case");
    env.cli(&["case", "approve", "LIM-1"]).fails();
    open(&env, "LIM-2", ALICE, &["GDB-0001", "GDB-0002"]).ok();
}

#[test]
fn case_open_files_from_a_file_and_stdin() {
    let env = Env::ready();
    let req = env.root.join("request.txt");
    write_file(
        &req,
        b"# request form NGC-9\nGDB-0001\n\n  run1/S1_R2.fastq  \n# trailing comment\n",
        0o644,
    );
    env.cli(&[
        "case",
        "open",
        "FF-1",
        "--requester",
        ALICE,
        "S3.spring",
        "--files-from",
        req.to_str().unwrap(),
    ])
    .ok()
    .stdout_has("ok        S3.spring")
    .stdout_has("ok        GDB-0001")
    .stdout_has("ok        run1/S1_R2.fastq");
    assert_eq!(env.case_json("FF-1")["files"].as_array().unwrap().len(), 3);

    env.cli_stdin(
        &["case", "open", "FF-2", "--requester", ALICE, "--files-from", "-"],
        "sample two R1.fastq\nGDB-0002\n",
    )
    .ok()
    .stdout_has("ok        sample two R1.fastq")
    .stdout_has("ok        GDB-0002");
    assert_eq!(env.case_json("FF-2")["files"].as_array().unwrap().len(), 2);

    // A bad line in the list is reported like any descriptor.
    env.cli_stdin(
        &["case", "open", "FF-3", "--requester", ALICE, "--files-from", "-"],
        "GDB-0001\nno-such-file\n",
    )
    .fails()
    .stdout_has("REFUSED   no-such-file: not found");
    // A missing list file is a clear error, and no case is registered.
    env.cli(&[
        "case",
        "open",
        "FF-4",
        "--requester",
        ALICE,
        "--files-from",
        "/nonexistent/request.txt",
    ])
    .fails()
    .stderr_has("/nonexistent/request.txt");
    env.cli(&["case", "show", "FF-4"]).fails().stderr_has("no case FF-4");
}

// ---------------------------------------------------------------- lifecycle

#[test]
fn lifecycle_open_approve_confirm_close_and_sealed_log() {
    let env = Env::ready();
    let r = "NGC-2026-0042";
    open(
        &env,
        r,
        ALICE,
        &["GDB-0001", "run1/S1_R2.fastq", "sample two R1.fastq", "S3.spring"],
    )
    .ok();
    assert_eq!(env.state_of(r), "open");
    env.cli(&["case", "approve", r])
        .ok()
        .stdout_has(&format!("case {r} exported: 4 file(s)"));

    // Staged copies exist and hold the verified bytes.
    let v = env.case_json(r);
    assert_eq!(v["case"]["state"], "exported");
    let files = v["files"].as_array().unwrap();
    assert_eq!(files.len(), 4);
    for (i, f) in files.iter().enumerate() {
        let staged = env.staging_dir(r).join(format!("{i:03}.data"));
        assert!(staged.is_file(), "{} missing", staged.display());
        assert_eq!(sha256_file(&staged), f["file"]["sha256"].as_str().unwrap());
    }

    env.cli(&["case", "show", r])
        .ok()
        .stdout_has("state       exported")
        .stdout_has("department  DEPT-A1")
        .stdout_has("sample two R1.fastq")
        .stdout_has(&env.file("GDB-0006").sha256);
    env.cli(&["case", "list"]).ok().stdout_has(r).stdout_has("exported");
    env.cli(&["case", "list", "--state", "exported"]).ok().stdout_has(r);
    let none = env.cli(&["case", "list", "--state", "open"]).ok();
    assert!(!none.stdout.contains(r), "{none}");
    env.cli(&["case", "list", "--state", "bogus"]).fails().code(2);
    env.cli(&["case", "approve", r]).fails().stderr_has("exported");

    // Receipts: wrong, incomplete, from other departments.
    let good = env.received_sums(r);
    assert_eq!(good.len(), 4);
    let mut wrong = good.clone();
    wrong[0].1 = good[1].1.clone();
    env.cli_as_stdin(Who::Dept(UID_A1), &["case", "confirm", r, "--sha256sums", "-"], &sums_list(&wrong))
        .fails()
        .stderr_has("receipt refused")
        .stderr_has("checksum differs");
    let incomplete = &good[..3];
    env.cli_as_stdin(
        Who::Dept(UID_A1),
        &["case", "confirm", r, "--sha256sums", "-"],
        &sums_list(incomplete),
    )
    .fails()
    .stderr_has("missing from the list");
    env.cli_as_stdin(Who::Dept(UID_A1), &["case", "confirm", r, "--sha256sums", "-"], "garbage\n")
        .fails()
        .stderr_has("receipt refused");
    assert_eq!(env.state_of(r), "exported");
    let events = env.events(r);
    assert_eq!(events.iter().filter(|e| *e == "receipt_refused").count(), 3, "{events:?}");
    let log = env.cli(&["case", "log", r]).ok();
    assert!(log.stdout.contains("receipt_refused") && log.stdout.contains("missing"), "{log}");

    // Another department (same group, and other group) learns nothing.
    let nope = env.cli_as(Who::Dept(UID_A2), &["case", "show", "NGC-2026-9999"]).fails();
    for who in [Who::Dept(UID_A2), Who::Dept(UID_B1)] {
        let show = env.cli_as(who, &["case", "show", r]).fails();
        assert_eq!(
            show.stderr.replace(r, "REF"),
            nope.stderr.replace("NGC-2026-9999", "REF"),
            "{show}\n{nope}"
        );
        assert_eq!(show.status, nope.status);
        let confirm = env
            .cli_as_stdin(who, &["case", "confirm", r, "--sha256sums", "-"], &sums_list(&good))
            .fails();
        assert_eq!(
            confirm.stderr.replace(r, "REF"),
            nope.stderr.replace("NGC-2026-9999", "REF"),
            "{confirm}"
        );
        assert!(!listed(&env, who).contains(&r.to_string()));
    }
    assert_eq!(env.state_of(r), "exported");

    // A right list for files the department never opened is no receipt.
    env.cli_as_stdin(Who::Dept(UID_A1), &["case", "confirm", r, "--sha256sums", "-"], &sums_list(&good))
        .fails()
        .stderr_has("were never opened in the mount by the department's transfer account");
    assert_eq!(env.state_of(r), "exported");
    // Staff reading the files does not count either; the department's pull does.
    env.pull_as(0, r);
    env.cli_as_stdin(Who::Dept(UID_A1), &["case", "confirm", r, "--sha256sums", "-"], &sums_list(&good))
        .fails()
        .stderr_has("never opened");
    env.pull_as(UID_A1, r);
    // The owning department confirms with the right list: received.
    env.cli_as_stdin(Who::Dept(UID_A1), &["case", "confirm", r, "--sha256sums", "-"], &sums_list(&good))
        .ok()
        .stdout_has("receipt confirmed");
    assert_eq!(env.state_of(r), "received");
    env.cli_as(Who::Dept(UID_A1), &["case", "show", r])
        .ok()
        .stdout_has("state       received");
    // The department sees what its mount shows: names, ids, sizes, sha256;
    // no GDB paths, no catalog columns such as sample_id.
    let own = env.cli_as(Who::Dept(UID_A1), &["case", "show", r, "--json"]).ok();
    assert!(!own.stdout.contains("run1/") && !own.stdout.contains("sample_id"), "{own}");
    assert_eq!(own.json()["delivered"].as_array().map(|a| a.len()), Some(good.len()), "{own}");
    // Confirming twice is refused.
    env.cli_as_stdin(Who::Dept(UID_A1), &["case", "confirm", r, "--sha256sums", "-"], &sums_list(&good))
        .fails()
        .stderr_has("received");

    // Close: staging deleted, log sealed and written out.
    env.cli(&["case", "close", r]).ok().stdout_has("closed");
    assert_eq!(env.state_of(r), "closed");
    assert!(!env.staging_dir(r).exists());
    let events = env.events(r);
    assert_eq!(events.first().map(String::as_str), Some("opened"));
    assert_eq!(events.last().map(String::as_str), Some("sealed"));
    for e in ["approved", "exported", "receipt_refused", "received", "closed"] {
        assert!(events.iter().any(|x| x == e), "{e} missing from {events:?}");
    }
    env.cli(&["case", "close", r]).fails().stderr_has("closed");
    env.cli(&["case", "reject", r, "--reason", "late"]).fails();

    let sealed = env.sealed_log(r);
    assert!(sealed.is_file());
    let sealed_s = sealed.to_str().unwrap();
    env.cli(&["audit", "verify", "--file", sealed_s])
        .ok()
        .stdout_has(&format!("ok: sealed log of case {r}, {} records", events.len()));
    env.cli(&["audit", "verify"]).ok().stdout_has("every chain intact");

    // Edit one byte of the sealed log: both checks fail.
    let text = std::fs::read_to_string(&sealed).unwrap();
    assert!(text.contains("\"actor\":\"root\""), "{text}");
    let forged = text.replacen("\"actor\":\"root\"", "\"actor\":\"ro0t\"", 1);
    assert_eq!(forged.len(), text.len());
    std::fs::write(&sealed, &forged).unwrap();
    env.cli(&["audit", "verify", "--file", sealed_s])
        .fails()
        .stderr_has(sealed_s)
        .stderr_has("record 1");
    env.cli(&["audit", "verify"])
        .fails()
        .stderr_has("failed verification")
        .stderr_has(sealed_s);
    // Truncating the seal off is caught too.
    let lines: Vec<&str> = text.lines().collect();
    let cut = env.root.join("cut.jsonl");
    write_file(&cut, (lines[..lines.len() - 1].join("\n") + "\n").as_bytes(), 0o644);
    env.cli(&["audit", "verify", "--file", cut.to_str().unwrap()])
        .fails()
        .stderr_has("seal");
}

#[test]
fn close_without_receipt_needs_force_and_reason_and_reject_needs_reason() {
    let env = Env::ready();
    exported(&env, "FC-1", ALICE, &["GDB-0001"]);
    env.cli(&["case", "close", "FC-1"]).fails().stderr_has("--force --reason");
    // --force without --reason is a usage error.
    env.cli(&["case", "close", "FC-1", "--force"]).fails().code(2);
    env.cli(&["case", "close", "FC-1", "--force", "--reason", " "])
        .fails()
        .stderr_has("--reason");
    assert_eq!(env.state_of("FC-1"), "exported");
    assert!(env.staging_dir("FC-1").exists());
    env.cli(&["case", "close", "FC-1", "--force", "--reason", "requester withdrew"])
        .ok();
    assert_eq!(env.state_of("FC-1"), "closed");
    assert!(!env.staging_dir("FC-1").exists());
    assert!(env.sealed_log("FC-1").is_file());
    let log = env.cli(&["case", "log", "FC-1", "--json"]).ok().json();
    let closed = log.as_array().unwrap().iter().find(|r| r["event"] == "closed").unwrap().clone();
    assert_eq!(closed["details"]["forced"], true, "{closed}");
    assert_eq!(closed["details"]["reason"], "requester withdrew", "{closed}");

    // An open case can be force-closed too.
    open(&env, "FC-2", ALICE, &["GDB-0002"]).ok();
    env.cli(&["case", "close", "FC-2"]).fails();
    env.cli(&["case", "close", "FC-2", "--force", "--reason", "duplicate request"]).ok();
    assert_eq!(env.state_of("FC-2"), "closed");

    // Reject needs a reason.
    open(&env, "RJ-1", ALICE, &["GDB-0002"]).ok();
    env.cli(&["case", "reject", "RJ-1"]).fails().code(2);
    env.cli(&["case", "reject", "RJ-1", "--reason", ""]).fails().stderr_has("--reason");
    assert_eq!(env.state_of("RJ-1"), "open");
    env.cli(&["case", "reject", "RJ-1", "--reason", "not a clinical need"])
        .ok()
        .stdout_has("rejected");
    assert_eq!(env.state_of("RJ-1"), "rejected");
    assert!(env.sealed_log("RJ-1").is_file());
    env.cli(&["audit", "verify", "--file", env.sealed_log("RJ-1").to_str().unwrap()])
        .ok();
    env.cli(&["case", "approve", "RJ-1"]).fails().stderr_has("rejected");
    // An exported case cannot be rejected (only force-closed).
    exported(&env, "RJ-2", ALICE, &["GDB-0006"]);
    env.cli(&["case", "reject", "RJ-2", "--reason", "x"])
        .fails()
        .stderr_has("--force --reason");
    env.cli(&["audit", "verify"]).ok();
}

#[test]
fn tampering_with_the_database_fails_audit_verify() {
    let mut env = Env::ready();
    exported(&env, "TAMPER-1", ALICE, &["GDB-0001"]);
    exported(&env, "INTACT-1", ALICE, &["GDB-0002"]);
    exported(&env, "CUT-1", ALICE, &["GDB-0006"]);
    env.cli(&["audit", "verify"]).ok().stdout_has("ok: 3 case logs");
    assert_eq!(env.stop(), Some(0), "{}", env.daemon_log());
    env.sql("UPDATE case_events SET actor = 'mallory' WHERE case_ref = 'TAMPER-1' AND seq = 2");
    env.sql("DELETE FROM case_events WHERE case_ref = 'CUT-1' AND seq = 3");
    assert_eq!(env.sql("SELECT COUNT(*) FROM case_events WHERE actor = 'mallory'"), "1");
    env.start();
    let out = env
        .cli(&["audit", "verify"])
        .fails()
        .stderr_has("2 case log(s) failed verification")
        .stderr_has("case TAMPER-1: record 2")
        .stderr_has("case CUT-1: record 3")
        .stderr_has("removed");
    assert!(!out.stderr.contains("INTACT-1"), "{out}");
    let json = env.cli(&["audit", "verify", "--json"]).fails().json();
    assert_eq!(json["failures"].as_array().unwrap().len(), 2, "{json}");
    // A broken log refuses the close.
    env.cli(&["case", "close", "TAMPER-1", "--force", "--reason", "x"])
        .fails()
        .stderr_has("log is broken");
    assert_eq!(env.state_of("TAMPER-1"), "exported");
    env.cli(&["case", "close", "INTACT-1", "--force", "--reason", "x"]).ok();
}

#[test]
fn a_gdb_file_that_changed_blocks_the_case() {
    let env = Env::ready();
    open(&env, "BLK-1", ALICE, &["GDB-0001", "GDB-0002"]).ok();
    let p = env.gdb_path("GDB-0002");
    let orig = std::fs::read(&p).unwrap();
    let mut bad = orig.clone();
    bad[100] ^= 0x20;
    std::fs::write(&p, &bad).unwrap();
    env.cli(&["case", "approve", "BLK-1"])
        .fails()
        .stderr_has("case BLK-1 blocked")
        .stderr_has("run1/S1_R2.fastq")
        .stderr_has("sha256");
    assert_eq!(env.state_of("BLK-1"), "blocked");
    env.cli(&["case", "show", "BLK-1"])
        .ok()
        .stdout_has("state       blocked")
        .stdout_has("blocked     run1/S1_R2.fastq: sha256 is ")
        .stdout_has(&env.file("GDB-0002").sha256);
    let events = env.events("BLK-1");
    assert!(events.iter().any(|e| e == "blocked"), "{events:?}");
    assert!(!env.staging_dir("BLK-1").exists());
    env.cli(&["case", "list", "--state", "blocked"]).ok().stdout_has("BLK-1");
    // A size change is caught too.
    open(&env, "BLK-2", ALICE, &["GDB-0002"]).ok();
    let mut longer = orig.clone();
    longer.push(b'\n');
    std::fs::write(&p, &longer).unwrap();
    env.cli(&["case", "approve", "BLK-2"]).fails().stderr_has("bytes");
    // Once the GDB is repaired, the blocked case can be approved again.
    std::fs::write(&p, &orig).unwrap();
    env.cli(&["case", "approve", "BLK-1"]).ok().stdout_has("exported");
    assert_eq!(env.state_of("BLK-1"), "exported");
    env.cli(&["audit", "verify"]).ok();
}

#[test]
fn direct_mode_exports_without_staging_copies() {
    let env = Env::ready_with(|o| o.mode = Some("direct".into()));
    env.cli(&["status"]).ok().stdout_has("mode        direct");
    // Direct mode serves only GDB files that cannot change under a reader.
    let _immutable = Immutable::set(&["GDB-0001", "GDB-0005", "GDB-0006"].map(|id| env.gdb_path(id)));
    exported(&env, "DIR-1", ALICE, &["GDB-0001", "sample two R1.fastq", "S3.spring"]);
    assert!(!env.staging_dir("DIR-1").exists());
    let staged: Vec<_> = std::fs::read_dir(env.state.join("staging"))
        .map(|d| d.filter_map(Result::ok).map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(staged.is_empty(), "{staged:?}");
    let sums = env.received_sums("DIR-1");
    env.pull_as(UID_A1, "DIR-1");
    env.cli_as_stdin(
        Who::Dept(UID_A1),
        &["case", "confirm", "DIR-1", "--sha256sums", "-"],
        &sums_list(&sums),
    )
    .ok();
    env.cli(&["case", "close", "DIR-1"]).ok();
    assert!(env.sealed_log("DIR-1").is_file());
    // A changed GDB file blocks in direct mode too, immutable or not.
    open(&env, "DIR-2", ALICE, &["GDB-0002"]).ok();
    let p = env.gdb_path("GDB-0002");
    let mut bytes = std::fs::read(&p).unwrap();
    bytes[0] ^= 1;
    std::fs::write(&p, &bytes).unwrap();
    let _changed = Immutable::set(&[p]);
    env.cli(&["case", "approve", "DIR-2"])
        .fails()
        .stderr_has("blocked")
        .stderr_has("sha256");
}

// ---------------------------------------------------------------- roles

#[test]
fn non_root_staff_can_do_everything() {
    let env = Env::new();
    let mut env = env;
    env.start();
    let s = Who::Staff;
    let catalog = env.catalog.display().to_string();
    env.cli_as(s, &["catalog", "import", catalog.as_str()]).ok().stdout_has("8 added");
    env.cli_as(s, &["catalog", "show", "GDB-0001"]).ok();
    env.cli_as(s, &["status"]).ok().stdout_has("catalog     8 files");
    env.cli_as(s, &["case", "open", "ST-1", "--requester", ALICE, "GDB-0001", "GDB-0002"])
        .ok();
    env.cli_as(s, &["case", "approve", "ST-1"]).ok().stdout_has("exported");
    env.cli_as(s, &["case", "show", "ST-1"]).ok().stdout_has("verification report");
    env.cli_as(s, &["case", "list"]).ok().stdout_has("ST-1");
    let log = env.cli_as(s, &["case", "log", "ST-1", "--json"]).ok().json();
    assert_eq!(log[0]["uid"], STAFF_UID, "{log}");
    let sums = sums_list(&env.received_sums("ST-1"));
    env.pull_as(UID_A1, "ST-1");
    env.cli_as_stdin(s, &["case", "confirm", "ST-1", "--sha256sums", "-"], &sums).ok();
    env.cli_as(s, &["case", "close", "ST-1"]).ok();
    env.cli_as(s, &["case", "open", "ST-2", "--requester", ALICE, "GDB-0006"]).ok();
    env.cli_as(s, &["case", "reject", "ST-2", "--reason", "no"]).ok();
    env.cli_as(s, &["case", "open", "ST-3", "--requester", ANNA, "GDB-0004"]).ok();
    env.cli_as(s, &["case", "approve", "ST-3"]).ok();
    env.cli_as(s, &["case", "close", "ST-3", "--force", "--reason", "test"]).ok();
    env.cli_as(s, &["audit", "verify"]).ok().stdout_has("ok: 3 case logs");
    assert_eq!(env.state_of("ST-1"), "closed");
    assert_eq!(env.state_of("ST-2"), "rejected");
    assert_eq!(env.state_of("ST-3"), "closed");
}

#[test]
fn a_transfer_account_sees_and_confirms_only_its_own_cases() {
    let env = Env::ready();
    exported(&env, "OWN-1", ALICE, &["GDB-0001", "GDB-0005"]);
    open(&env, "OWN-2", ALICE, &["GDB-0002"]).ok();
    exported(&env, "OTHER-1", ANNA, &["GDB-0004"]);
    exported(&env, "B-1", BERT, &["GDB-0007"]);

    let a1 = Who::Dept(UID_A1);
    let mut mine = listed(&env, a1);
    mine.sort();
    assert_eq!(mine, ["OWN-1", "OWN-2"]);
    assert_eq!(listed(&env, Who::Dept(UID_A2)), ["OTHER-1"]);
    assert_eq!(listed(&env, Who::Dept(UID_B1)), ["B-1"]);
    let text = env.cli_as(a1, &["case", "list", "--state", "exported"]).ok();
    assert!(text.stdout.contains("OWN-1") && !text.stdout.contains("OWN-2"), "{text}");

    // Show: own case yes (without the verification report), others no.
    let show = env.cli_as(a1, &["case", "show", "OWN-1"]).ok().stdout_has("state       exported");
    assert!(!show.stdout.contains("verification report"), "{show}");
    let json = env.cli_as(a1, &["case", "show", "OWN-1", "--json"]).ok().json();
    assert_eq!(json["case"]["report"]["lines"].as_array().unwrap().len(), 0, "{json}");
    env.cli_as(a1, &["case", "show", "OTHER-1"]).fails().stderr_has("no case OTHER-1");
    env.cli_as(a1, &["case", "show", "B-1"]).fails().stderr_has("no case B-1");

    // Staff-only operations are refused.
    let catalog = env.catalog.display().to_string();
    let denied: Vec<Vec<&str>> = vec![
        vec!["case", "open", "A1-X", "--requester", ALICE, "GDB-0001"],
        vec!["case", "approve", "OWN-2"],
        vec!["case", "reject", "OWN-2", "--reason", "mine"],
        vec!["case", "close", "OWN-1", "--force", "--reason", "mine"],
        vec!["case", "log", "OWN-1"],
        vec!["status"],
        vec!["catalog", "show", "GDB-0001"],
        vec!["catalog", "import", catalog.as_str()],
        vec!["audit", "verify"],
    ];
    for args in &denied {
        env.cli_as(a1, args).fails().stderr_has("permission denied");
    }
    env.cli(&["case", "show", "A1-X"]).fails();
    // Another department's case: approve/reject/close say no such case.
    env.cli_as(a1, &["case", "approve", "OTHER-1"]).fails().stderr_has("no case");
    env.cli_as(a1, &["case", "close", "OTHER-1", "--force", "--reason", "x"])
        .fails()
        .stderr_has("no case");

    // Confirm its own case.
    let sums = sums_list(&env.received_sums("OWN-1"));
    env.pull_as(UID_A1, "OWN-1");
    env.cli_as_stdin(a1, &["case", "confirm", "OTHER-1", "--sha256sums", "-"], &sums)
        .fails()
        .stderr_has("no case OTHER-1");
    env.cli_as_stdin(a1, &["case", "confirm", "OWN-1", "--sha256sums", "-"], &sums).ok();
    // ... but not close it.
    env.cli_as(a1, &["case", "close", "OWN-1"]).fails().stderr_has("permission denied");
    assert_eq!(env.state_of("OWN-1"), "received");
    assert_eq!(env.state_of("OWN-2"), "open");
    assert_eq!(env.state_of("OTHER-1"), "exported");
    let log = env.cli(&["case", "log", "OWN-1", "--json"]).ok().json();
    let received = log.as_array().unwrap().iter().find(|r| r["event"] == "received").unwrap().clone();
    assert_eq!(received["uid"], UID_A1, "{received}");
}

#[test]
fn a_stranger_is_refused_everything() {
    let env = Env::ready();
    exported(&env, "S-1", ALICE, &["GDB-0001"]);
    let catalog = env.catalog.display().to_string();
    let all: Vec<Vec<&str>> = vec![
        vec!["status"],
        vec!["status", "--json"],
        vec!["catalog", "show", "GDB-0001"],
        vec!["catalog", "import", catalog.as_str()],
        vec!["case", "open", "S-2", "--requester", ALICE, "GDB-0001"],
        vec!["case", "approve", "S-1"],
        vec!["case", "reject", "S-1", "--reason", "x"],
        vec!["case", "close", "S-1", "--force", "--reason", "x"],
        vec!["case", "list"],
        vec!["case", "show", "S-1"],
        vec!["case", "log", "S-1"],
        vec!["audit", "verify"],
    ];
    for args in &all {
        let out = env
            .cli_as(Who::Stranger, args)
            .fails()
            .code(1)
            .stderr_has("permission denied")
            .stderr_has("4242");
        assert!(!out.stdout.contains("S-1"), "{out}");
    }
    let sums = sums_list(&env.received_sums("S-1"));
    env.cli_as_stdin(Who::Stranger, &["case", "confirm", "S-1", "--sha256sums", "-"], &sums)
        .fails()
        .stderr_has("permission denied");
    assert_eq!(env.state_of("S-1"), "exported");
    env.cli(&["case", "show", "S-2"]).fails();
}

// ---------------------------------------------------------------- expiry, reload

#[test]
fn an_unconfirmed_case_expires_after_case_ttl() {
    let env = Env::ready_with(|o| o.case_ttl = Some("2s".into()));
    exported(&env, "EXP-1", ALICE, &["GDB-0001"]);
    open(&env, "EXP-OPEN", ALICE, &["GDB-0002"]).ok();
    assert!(env.staging_dir("EXP-1").exists());
    let expired = env.wait_for(Duration::from_secs(15), || env.state_of("EXP-1") == "expired");
    assert!(expired, "not expired: {}\n{}", env.state_of("EXP-1"), env.daemon_log());
    // The staging area goes and the log is sealed right after the state change.
    let sealed = env.sealed_log("EXP-1");
    assert!(env.wait_for(Duration::from_secs(5), || sealed.is_file()), "the log is not sealed");
    assert!(!env.staging_dir("EXP-1").exists());
    env.cli(&["audit", "verify", "--file", sealed.to_str().unwrap()]).ok();
    let log = env.cli(&["case", "log", "EXP-1", "--json"]).ok().json();
    let recs = log.as_array().unwrap();
    let exp = recs.iter().find(|r| r["event"] == "expired").unwrap();
    assert!(exp["details"]["reason"].as_str().unwrap().contains("case_ttl"), "{exp}");
    assert_eq!(recs.last().unwrap()["event"], "sealed");
    // Open cases do not expire; confirming an expired case is refused.
    assert_eq!(env.state_of("EXP-OPEN"), "open");
    let sums = sums_list(&env.received_sums("EXP-1"));
    env.cli_as_stdin(Who::Dept(UID_A1), &["case", "confirm", "EXP-1", "--sha256sums", "-"], &sums)
        .fails()
        .stderr_has("expired");
    env.cli(&["audit", "verify"]).ok();
}

#[test]
fn sighup_reloads_the_directory_and_keeps_the_old_one_when_broken() {
    let mut env = Env::ready();
    const DAVE: &str = "dave@a3.example";
    let added = directory_toml(&format!(
        "\n[[department]]\nid = \"DEPT-A3\"\nname = \"Department A3\"\ngroup = \"{GROUP_A}\"\ntransfer_account = 2004\n\n\
         [[user]]\nid = \"{DAVE}\"\ndepartment = \"DEPT-A3\"\n"
    ));
    let departments = || {
        env.cli(&["status", "--json"]).ok().json()["directory_departments"]
            .as_u64()
            .unwrap()
    };
    assert_eq!(departments(), 3);
    open(&env, "HUP-0", DAVE, &["GDB-0001"]).fails().stdout_has("not in the directory");

    env.write_directory(&added);
    env.signal(Signal::SIGHUP);
    assert!(env.wait_for(Duration::from_secs(10), || departments() == 4), "{}", env.daemon_log());
    open(&env, "HUP-1", DAVE, &["GDB-0001"]).ok();
    assert_eq!(env.case_json("HUP-1")["case"]["department"], "DEPT-A3");
    env.cli_as(Who::Dept(2004), &["case", "list"]).ok().stdout_has("HUP-1");

    // A broken directory is refused as a whole; the old one stays in force.
    let broken = added.replace(
        "group = \"group-a\"\ntransfer_account = 2004",
        "group = \"group-nowhere\"\ntransfer_account = 2004",
    );
    assert_ne!(broken, added);
    env.write_directory(&broken);
    env.signal(Signal::SIGHUP);
    assert!(
        env.wait_for(Duration::from_secs(10), || env.daemon_log().contains("directory reload refused")),
        "{}",
        env.daemon_log()
    );
    let log = env.daemon_log();
    assert!(log.contains("group-nowhere") && log.contains("DEPT-A3"), "{log}");
    assert_eq!(departments(), 4);
    open(&env, "HUP-2", DAVE, &["GDB-0002"]).ok();
    open(&env, "HUP-3", ALICE, &["GDB-0006"]).ok();
    assert!(env.running());
}

#[test]
fn reload_tells_staff_whether_the_directory_was_taken_and_config_check_needs_no_daemon() {
    let env = Env::ready();
    env.cli(&["config", "check"]).ok().stdout_has("3 departments");
    env.cli(&["reload"]).ok().stdout_has("directory reloaded: 3 departments");
    env.cli_as(Who::Staff, &["reload"]).ok();
    env.cli_as(Who::Dept(UID_A1), &["reload"])
        .fails()
        .stderr_has("only workcopy staff may use `reload`");

    // A broken directory: `config check` says why (78), `reload` fails with
    // the reason, and the old directory stays in force.
    let good = std::fs::read_to_string(&env.directory).unwrap();
    env.write_directory(&good.replace("group = \"group-b\"", "group = \"group-nowhere\""));
    env.cli(&["config", "check"]).code(78).stderr_has("group-nowhere");
    env.cli(&["reload"])
        .code(1)
        .stderr_has("directory refused; the previous directory stays in force")
        .stderr_has("group-nowhere");
    assert_eq!(env.cli(&["status", "--json"]).ok().json()["directory_departments"], 3);
    open(&env, "RELOAD-1", BERT, &["GDB-0007"]).ok();

    // A candidate file is checked before it replaces the directory.
    let candidate = env.root.join("directory.toml.new");
    write_file(&candidate, good.as_bytes(), 0o644);
    env.cli(&["config", "check", "--directory", candidate.to_str().unwrap()])
        .ok()
        .stdout_has("directory.toml.new");
    env.write_directory(&good);
    env.cli(&["reload"]).ok();

    // Without a daemon, config check still answers; a broken config is 78 too.
    drop(env);
    let env = Env::with(|o| o.extra_config = "colour = \"blue\"\n".into());
    env.cli(&["config", "check"]).code(78).stderr_has("colour");
}

// ---------------------------------------------------------------- socket

/// Sends raw bytes on a fresh connection, half-closes, and returns what came back.
fn raw(env: &Env, bytes: &[u8]) -> Vec<u8> {
    let mut s = UnixStream::connect(&env.socket).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.set_write_timeout(Some(Duration::from_secs(10))).unwrap();
    let _ = s.write_all(bytes);
    let _ = s.shutdown(std::net::Shutdown::Write);
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    out
}

fn frame(body: &[u8]) -> Vec<u8> {
    let mut v = (body.len() as u32).to_be_bytes().to_vec();
    v.extend_from_slice(body);
    v
}

/// Decodes one reply frame.
#[track_caller]
fn reply(bytes: &[u8]) -> serde_json::Value {
    assert!(bytes.len() >= 4, "no reply frame: {bytes:?}");
    let n = u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]) as usize;
    assert_eq!(bytes.len(), 4 + n, "one frame expected");
    serde_json::from_slice(&bytes[4..]).unwrap()
}

#[track_caller]
fn refused_invalid(bytes: &[u8], what: &str) {
    let v = reply(bytes);
    assert_eq!(v["Err"]["kind"], "invalid", "{what}: {v}");
    assert!(!v["Err"]["message"].as_str().unwrap_or_default().is_empty(), "{what}: {v}");
}

#[test]
fn the_control_socket_survives_bad_input() {
    let env = Env::ready();
    // The raw protocol works.
    let ok = reply(&raw(&env, &frame(br#"{"op":"status"}"#)));
    assert_eq!(ok["Ok"]["reply"], "status", "{ok}");
    // Two requests on one connection.
    let mut two = frame(br#"{"op":"status"}"#);
    two.extend(frame(br#"{"op":"case_list","state":null}"#));
    let back = raw(&env, &two);
    assert!(back.len() > 8, "{back:?}");

    let huge = [0xFFu8, 0xFF, 0xFF, 0xFF, b'{', b'}'];
    let cases: Vec<(&str, Vec<u8>, bool)> = vec![
        ("garbage text", b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(), true),
        ("oversized length", huge.to_vec(), true),
        (
            "just over the limit",
            {
                let mut v = ((1u32 << 20) + 1).to_be_bytes().to_vec();
                v.extend_from_slice(b"{}");
                v
            },
            true,
        ),
        ("invalid UTF-8", frame(b"\xff\xfe\xfd{\"op\":\"status\"}"), true),
        ("invalid JSON", frame(br#"{"op": "status""#), true),
        ("not an object", frame(b"[1,2,3]"), true),
        ("unknown op", frame(br#"{"op":"format_disk"}"#), true),
        ("missing fields", frame(br#"{"op":"case_show"}"#), true),
        ("NUL bytes", frame(&[0u8; 64]), true),
        ("empty frame", frame(b""), true),
        (
            "truncated frame",
            {
                let mut v = 100u32.to_be_bytes().to_vec();
                v.extend_from_slice(br#"{"op":"st"#);
                v
            },
            false,
        ),
        ("truncated length", vec![0u8, 0], false),
        ("nothing", Vec::new(), false),
    ];
    for (what, bytes, answers) in cases {
        let back = raw(&env, &bytes);
        if answers {
            refused_invalid(&back, what);
        } else {
            assert!(back.is_empty(), "{what}: {back:?}");
        }
        env.cli(&["status"]).ok().stdout_has("catalog     8 files");
    }
    // A catalog import without the catalog's descriptor.
    let v = reply(&raw(&env, &frame(br#"{"op":"catalog_import"}"#)));
    assert_eq!(v["Err"]["kind"], "invalid", "{v}");
    assert!(v["Err"]["message"].as_str().unwrap().contains("catalog"), "{v}");
    // A bad case reference inside a valid message.
    let v = reply(&raw(&env, &frame(br#"{"op":"case_show","case_ref":"../../etc"}"#)));
    assert_eq!(v["Err"]["kind"], "invalid", "{v}");

    // A client that stalls mid-frame does not hold up anyone else.
    let mut stalled = UnixStream::connect(&env.socket).unwrap();
    stalled.write_all(&[0, 0, 0, 50, b'{']).unwrap();
    env.cli(&["status"]).ok();
    open(&env, "SOCK-1", ALICE, &["GDB-0001"]).ok();
    drop(stalled);
    // Many connections that close at once.
    let conns: Vec<UnixStream> = (0..50).map(|_| UnixStream::connect(&env.socket).unwrap()).collect();
    drop(conns);
    env.cli(&["case", "show", "SOCK-1"]).ok();
    assert!(!env.daemon_log().contains("panicked"), "{}", env.daemon_log());
}

// ---------------------------------------------------------------- restart, CLI errors

#[test]
fn kill_9_and_restart_keeps_exported_cases() {
    let mut env = Env::ready();
    exported(&env, "RS-1", ALICE, &["GDB-0001", "GDB-0006"]);
    open(&env, "RS-2", ALICE, &["GDB-0002"]).ok();
    exported(&env, "RS-3", ALICE, &["GDB-0002"]);
    env.cli(&["case", "close", "RS-3", "--force", "--reason", "x"]).ok();
    env.kill9();
    assert!(env.socket.exists(), "a stale socket is left behind by kill -9");
    // The crash also lost the sealed log of the closed case: it is written again.
    std::fs::remove_file(env.sealed_log("RS-3")).unwrap();
    env.start();
    assert!(env.sealed_log("RS-3").is_file(), "{}", env.daemon_log());
    assert_eq!(env.state_of("RS-1"), "exported");
    assert_eq!(env.state_of("RS-2"), "open");
    assert_eq!(env.state_of("RS-3"), "closed");
    env.cli(&["case", "show", "RS-1"]).ok().stdout_has("state       exported");
    env.cli(&["audit", "verify"]).ok().stdout_has("ok: 3 case logs");
    for i in 0..2 {
        assert!(env.staging_dir("RS-1").join(format!("{i:03}.data")).is_file());
    }
    // The case carries on after the restart: pulled, confirmed, closed.
    let sums = sums_list(&env.received_sums("RS-1"));
    env.pull_as(UID_A1, "RS-1");
    env.cli_as_stdin(Who::Dept(UID_A1), &["case", "confirm", "RS-1", "--sha256sums", "-"], &sums)
        .ok();
    env.cli(&["case", "close", "RS-1"]).ok();
    env.cli(&["case", "approve", "RS-2"]).ok();
    // An orderly stop and start, too.
    assert_eq!(env.stop(), Some(0), "{}", env.daemon_log());
    env.start();
    assert_eq!(env.state_of("RS-2"), "exported");
    env.cli(&["audit", "verify"]).ok();
}

#[test]
fn a_staged_copy_lost_in_a_crash_is_staged_again() {
    let mut env = Env::ready();
    exported(&env, "LOST-1", ALICE, &["GDB-0001", "GDB-0002"]);
    env.kill9();
    std::fs::remove_file(env.staging_dir("LOST-1").join("001.data")).unwrap();
    env.start();
    assert_eq!(env.state_of("LOST-1"), "exported");
    // The lost copy is staged and verified again in the background; the case
    // comes back into the mount once that is done.
    let staged = env.staging_dir("LOST-1").join("001.data");
    let back = env.wait_for(Duration::from_secs(20), || env.case_json("LOST-1")["visible"] == true);
    assert!(back, "{}", env.daemon_log());
    assert!(staged.is_file(), "{}", env.daemon_log());
    assert_eq!(sha256_file(&staged), env.file("GDB-0002").sha256);
}

#[test]
fn cli_errors_unknown_config_key_and_no_daemon() {
    let env = Env::new();
    // Unknown key: non-zero, the key and the file named.
    let bad = env.root.join("bad.toml");
    write_file(&bad, format!("{}colour = \"blue\"\n", env.config_toml()).as_bytes(), 0o644);
    let bad_s = bad.to_str().unwrap();
    for args in [
        vec!["--config", bad_s, "status"],
        vec!["--config", bad_s, "serve"],
        vec!["--config", bad_s, "case", "list"],
    ] {
        env.cli_raw(&args).fails().stderr_has("colour").stderr_has(bad_s);
    }
    // A bad value names its key.
    let bad2 = env.root.join("bad2.toml");
    write_file(&bad2, format!("{}case_ttl = \"soon\"\n", env.config_toml()).as_bytes(), 0o644);
    env.cli_raw(&["--config", bad2.to_str().unwrap(), "status"])
        .fails()
        .stderr_has("case_ttl");
    // A missing config file is named.
    env.cli_raw(&["--config", "/nonexistent/workcopy.toml", "status"])
        .fails()
        .stderr_has("/nonexistent/workcopy.toml");

    // The daemon is not running: exit status 3.
    env.cli(&["status"]).fails().code(3).stderr_has("daemon");
    env.cli(&["case", "list"]).fails().code(3);
    env.cli_as(Who::Dept(UID_A1), &["case", "list"]).fails().code(3);
    env.cli_as(Who::Stranger, &["status"]).fails().code(3);
    // `audit verify --file` needs no daemon.
    let missing = env.root.join("none.jsonl");
    env.cli(&["audit", "verify", "--file", missing.to_str().unwrap()]).fails().code(1);
    // A usage error is 2.
    env.cli(&["case", "frobnicate"]).fails().code(2);
}

#[test]
fn a_bad_directory_at_start_is_refused_naming_the_entry() {
    let mut env = Env::new();
    env.write_directory(&directory_toml("\n[[user]]\nid = \"eve@x\"\ndepartment = \"DEPT-NONE\"\n"));
    let out = env.cli_raw(&["--config", env.config.to_str().unwrap(), "serve"]).fails();
    assert!(out.stderr.contains("eve@x") && out.stderr.contains("DEPT-NONE"), "{out}");
    env.write_directory(&directory_toml(""));
    env.start();
    env.cli(&["status"]).ok();
}

/// An installation whose GDB also holds GDB-0900, a 64 MiB file (large
/// enough that staging it takes a moment); started, catalog imported.
fn env_with_big_file() -> (Env, Vec<u8>) {
    let mut env = Env::new();
    let big: Vec<u8> = (0..(64u64 << 20)).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    write_file(&env.gdb.join("run1/big.fastq"), &big, 0o644);
    let mut text = catalog_tsv(&env.files);
    text.push_str(&format!(
        "GDB-0900\trun1/big.fastq\t{DEPT_A1}\t{}\t{}\t2025-01-01T00:00:00Z\tBIG\n",
        big.len(),
        sha256_hex(&big)
    ));
    write_file(&env.catalog, text.as_bytes(), 0o644);
    env.start();
    env.import_catalog();
    (env, big)
}

#[test]
fn an_interrupted_staging_restarts_after_kill_9() {
    let (mut env, big) = env_with_big_file();
    open(&env, "INT-1", ALICE, &["GDB-0900", "GDB-0001"]).ok();
    env.cli(&["case", "approve", "INT-1", "--no-wait"])
        .ok()
        .stdout_has("staging started");
    env.kill9();
    env.start();
    let done = env.wait_for(Duration::from_secs(30), || env.state_of("INT-1") != "approved");
    assert!(done, "{}", env.daemon_log());
    assert_eq!(env.state_of("INT-1"), "exported", "{}", env.daemon_log());
    let dir = env.staging_dir("INT-1");
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["000.data", "001.data"], "no partial copies may be left");
    assert_eq!(sha256_file(&dir.join("000.data")), sha256_hex(&big));
    let events = env.events("INT-1");
    assert_eq!(events, ["opened", "approved", "exported"]);
    env.cli(&["audit", "verify"]).ok();
}

#[test]
fn catalog_with_binary_and_huge_lines_is_refused() {
    let env = Env::ready();
    let mut text = format!("{CATALOG_HEADER}\n").into_bytes();
    text.extend_from_slice(b"\xff\xfe\x00binary\tline\n"); // 2
    text.extend(std::iter::repeat_n(b'x', 100 * 1024)); // 3
    text.push(b'\n');
    let ok = format!(
        "GDB-0400\tnew/z.fastq\t{DEPT_A1}\t1\t{}\t2025-01-01T00:00:00Z\tS\n",
        "34".repeat(32)
    );
    text.extend_from_slice(ok.as_bytes()); // 4
    let p = env.root.join("binary.tsv");
    write_file(&p, &text, 0o644);
    let out = env
        .cli(&["catalog", "import", p.to_str().unwrap()])
        .fails()
        .stderr_has("line 2:")
        .stderr_has("UTF-8")
        .stderr_has("line 3:")
        .stderr_has("bytes long");
    assert!(out.stderr.len() < 4096, "the error repeats the huge line:\n{out}");
    env.cli(&["catalog", "show", "GDB-0400"]).fails();
    // Header problems.
    let p = env.write_catalog("empty.tsv", "");
    env.cli(&["catalog", "import", p.to_str().unwrap()]).fails().stderr_has("header");
    let p = env.write_catalog("short.tsv", "file_id\tpath\n");
    env.cli(&["catalog", "import", p.to_str().unwrap()])
        .fails()
        .stderr_has("missing column(s) department, size, sha256, submitted_at");
    // Two rows giving one path to two files.
    let mut files = env.files.clone();
    files[1].path = files[0].path.clone();
    let p = env.write_catalog("samepath.tsv", &catalog_tsv(&files));
    env.cli(&["catalog", "import", p.to_str().unwrap()])
        .fails()
        .stderr_has("line 3:")
        .stderr_has("is already on line 2");
    assert_eq!(catalog_files(&env), 8);
    assert_eq!(catalog_entry(&env, "GDB-0002")["path"], "run1/S1_R2.fastq");
}

#[test]
fn an_oversized_request_gets_a_clear_error() {
    // More than the 1 MiB request limit of descriptors: the CLI must say so,
    // not report a broken pipe, and no case may be registered.
    let env = Env::ready();
    let big: String = (0..200_000).map(|i| format!("descriptor-number-{i}\n")).collect();
    let out = env
        .cli_stdin(&["case", "open", "BIG-1", "--requester", ALICE, "--files-from", "-"], &big)
        .fails();
    assert!(
        !out.stderr.contains("Broken pipe") && (out.stderr.contains("limit") || out.stderr.contains("too large")),
        "the refusal should name the size limit:\n{out}"
    );
    env.cli(&["case", "show", "BIG-1"]).fails().stderr_has("no case BIG-1");
    env.cli(&["status"]).ok();
}

#[test]
fn a_second_daemon_on_the_same_socket_is_refused() {
    let env = Env::ready();
    open(&env, "TWO-1", ALICE, &["GDB-0001"]).ok();
    let out = env.cli_raw(&["--config", env.config.to_str().unwrap(), "serve"]).fails();
    assert!(out.stderr.contains("in use") || out.stderr.contains("already"), "{out}");
    env.cli(&["case", "approve", "TWO-1"]).ok();
    env.cli(&["status"]).ok();
}

#[test]
fn force_close_during_staging_leaves_nothing_behind() {
    let (env, _) = env_with_big_file();
    for (i, pause) in [0u64, 150].into_iter().enumerate() {
        let r = format!("FCS-{i}");
        open(&env, &r, ALICE, &["GDB-0001", "GDB-0900"]).ok();
        env.cli(&["case", "approve", &r, "--no-wait"]).ok();
        std::thread::sleep(Duration::from_millis(pause));
        env.cli(&["case", "close", &r, "--force", "--reason", "withdrawn"]).ok();
        // Whatever the staging job was doing, it must not bring the case back
        // or leave copies in the staging area.
        std::thread::sleep(Duration::from_millis(1500));
        assert_eq!(env.state_of(&r), "closed");
        assert!(!env.staging_dir(&r).exists(), "{}", env.daemon_log());
        let events = env.events(&r);
        assert_eq!(events.last().map(String::as_str), Some("sealed"), "{events:?}");
        assert!(!events.iter().any(|e| e == "blocked"), "{events:?}");
    }
    env.cli(&["audit", "verify"]).ok();
}

/// The files of a case are staged in parallel: a file that does not match
/// stops the others at once, and the case is blocked with that file's
/// reason (not with the stop of the others), leaving no copy behind.
#[test]
fn a_bad_file_stops_the_others_and_blocks_with_its_reason() {
    let (env, _) = env_with_big_file();
    open(&env, "PAR-1", ALICE, &["GDB-0900", "GDB-0001"]).ok();
    let p = env.gdb_path("GDB-0001");
    let mut bad = std::fs::read(&p).unwrap();
    bad[0] ^= 0x01;
    std::fs::write(&p, &bad).unwrap();
    let path = env.file("GDB-0001").path.clone();
    env.cli(&["case", "approve", "PAR-1"])
        .fails()
        .stderr_has(&format!("case PAR-1 blocked: {path}: sha256 is "));
    let log = env.cli(&["case", "log", "PAR-1", "--json"]).ok().stdout;
    assert!(!log.contains("staging stopped"), "{log}");
    assert!(!env.staging_dir("PAR-1").exists(), "{}", env.daemon_log());
    assert_eq!(env.events("PAR-1"), ["opened", "approved", "blocked"]);
}

/// A refused change (reject of an approved case, by staff or by the case's
/// own department) must not disturb the staging that is running.
#[test]
fn a_refused_reject_during_staging_leaves_staging_alone() {
    let (env, _) = env_with_big_file();
    open(&env, "RJ-1", ALICE, &["GDB-0001", "GDB-0900"]).ok();
    env.cli(&["case", "approve", "RJ-1", "--no-wait"]).ok();
    env.cli(&["case", "reject", "RJ-1", "--reason", "too late"])
        .fails()
        .stderr_has("approved");
    env.cli_as(Who::Dept(UID_A1), &["case", "reject", "RJ-1", "--reason", "mine"])
        .fails()
        .stderr_has("permission denied");
    let exported = env.wait_for(Duration::from_secs(60), || env.state_of("RJ-1") == "exported");
    assert!(exported, "staging was disturbed: {}\n{}", env.state_of("RJ-1"), env.daemon_log());
    assert!(!env.events("RJ-1").iter().any(|e| e == "blocked"));
}
