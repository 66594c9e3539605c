//! Where the calling thread runs: pinned to cores (sluiced keeps its other threads off the
//! workers'), or on one core in the idle scheduling class, for bulk work (a full apply's
//! compile) that may use a worker's core only while the worker sleeps.

use std::io;

/// Pins the calling thread (and the threads it starts from now on) to `cores`.
pub fn pin(cores: &[usize]) -> io::Result<()> {
    if let Some(c) = cores.iter().find(|&&c| c >= libc::CPU_SETSIZE as usize) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("core {c} is beyond CPU_SETSIZE"),
        ));
    }
    // SAFETY: a zeroed cpu_set_t is the empty set; CPU_SET writes inside it (every core is
    // below CPU_SETSIZE, checked above); pid 0 is the calling thread.
    let r = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        for &c in cores {
            libc::CPU_SET(c, &mut set);
        }
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set)
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Pins the calling thread to `core` and moves it to SCHED_IDLE: it then runs only when no
/// thread of another class wants the core, and a waking one preempts it at once (the kernel
/// preempts an idle-class task on any wakeup of a normal one). Lowering one's own class needs
/// no privilege. Either step may fail (a core outside the process's cgroup, a seccomp filter);
/// the thread is then left as it was for that step.
pub fn idle_on(core: usize) -> io::Result<()> {
    pin(&[core])?;
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: pid 0 is the calling thread; param is a valid sched_param (SCHED_IDLE takes
    // priority 0).
    if unsafe { libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The calling thread's cores.
    fn my_cores() -> Vec<usize> {
        // SAFETY: a zeroed cpu_set_t is the empty set; sched_getaffinity writes only inside it
        // (its size is passed); CPU_ISSET reads inside it, below CPU_SETSIZE.
        unsafe {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            assert_eq!(
                libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set),
                0
            );
            (0..libc::CPU_SETSIZE as usize)
                .filter(|&c| libc::CPU_ISSET(c, &set))
                .collect()
        }
    }

    #[test]
    fn the_thread_lands_on_the_core_in_the_idle_class() {
        let core = *my_cores().last().expect("some core");
        let (policy, cores) = std::thread::spawn(move || {
            idle_on(core).expect("idle_on");
            // SAFETY: pid 0 is the calling thread.
            (unsafe { libc::sched_getscheduler(0) }, my_cores())
        })
        .join()
        .unwrap();
        assert_eq!(policy, libc::SCHED_IDLE);
        assert_eq!(cores, vec![core]);
        // SAFETY: as above.
        assert_ne!(
            unsafe { libc::sched_getscheduler(0) },
            libc::SCHED_IDLE,
            "only that thread"
        );
        assert!(idle_on(usize::MAX).is_err());
    }
}
