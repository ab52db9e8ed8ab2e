//! Child processes tied to the test process.
#![allow(dead_code)]

use super::*;

// ---------------------------------------------------------------------------
// Child processes
// ---------------------------------------------------------------------------

pub(crate) type SpawnReq = (Command, mpsc::Sender<io::Result<Child>>);

/// Spawns `cmd` so that it is SIGKILLed when the test process dies, however
/// it dies. PR_SET_PDEATHSIG fires when the *thread* that forked exits, so
/// all children are forked by one thread that lives as long as the process
/// (test threads come and go).
pub(crate) fn spawn_tied_to_process(mut cmd: Command) -> io::Result<Child> {
    static SPAWNER: OnceLock<Mutex<mpsc::Sender<SpawnReq>>> = OnceLock::new();
    let parent = std::process::id() as libc::pid_t;
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(
                libc::PR_SET_PDEATHSIG,
                libc::SIGKILL as libc::c_ulong,
                0,
                0,
                0,
            ) != 0
            {
                return Err(io::Error::last_os_error());
            }
            if libc::getppid() != parent {
                libc::_exit(1);
            }
            Ok(())
        });
    }
    let tx = lock(SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<SpawnReq>();
        thread::Builder::new()
            .name("child-spawner".into())
            .spawn(move || {
                for (mut cmd, reply) in rx {
                    let _ = reply.send(cmd.spawn());
                }
            })
            .expect("spawner thread");
        Mutex::new(tx)
    }))
    .clone();
    let (rtx, rrx) = mpsc::channel();
    tx.send((cmd, rtx)).expect("spawner alive");
    rrx.recv().expect("spawner answers")
}

/// Runs `cmd` to completion with a time limit (killing it when exceeded),
/// stdout and stderr captured.
pub fn run_with_timeout(mut cmd: Command, limit: Duration) -> Output {
    let dir = tempfile::tempdir().unwrap();
    let (o, e) = (dir.path().join("stdout"), dir.path().join("stderr"));
    cmd.stdin(Stdio::null())
        .stdout(std::fs::File::create(&o).unwrap())
        .stderr(std::fs::File::create(&e).unwrap());
    let shown = format!("{cmd:?}");
    let mut child = spawn_tied_to_process(cmd).unwrap_or_else(|e| panic!("spawn {shown}: {e}"));
    let start = Instant::now();
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "{shown} still running after {limit:?}; stderr:\n{}",
                String::from_utf8_lossy(&std::fs::read(&e).unwrap_or_default())
            );
        }
        thread::sleep(Duration::from_millis(10));
    };
    Output {
        status,
        stdout: std::fs::read(&o).unwrap(),
        stderr: std::fs::read(&e).unwrap(),
    }
}

pub(crate) fn run_ok(cmd: Command) -> Output {
    let shown = format!("{cmd:?}");
    let out = run_with_timeout(cmd, Duration::from_secs(60));
    assert!(
        out.status.success(),
        "{shown} failed ({}):\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    out
}
