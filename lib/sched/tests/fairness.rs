//! The scheduling policy the queues produce, driven the way the kernel drives them: a timer tick
//! charges the running thread's slice; a used-up slice sends it to the back of its priority; a
//! preempted thread goes to the front.

use sched::{RunQueue, SchedError, Slice, Timeouts, DEFAULT_SLICE_TICKS, PRIORITIES};

/// A tiny kernel: one CPU, threads are `u32`s with fixed priorities.
struct Cpu {
    queue: RunQueue<u32>,
    running: Option<(u32, u8)>,
    slice: Slice,
    /// Ticks each thread has run, indexed by thread.
    ran: Vec<u64>,
    /// Thread that ran at each tick.
    trace: Vec<u32>,
}

impl Cpu {
    fn new(threads: usize) -> Self {
        Self {
            queue: RunQueue::new(),
            running: None,
            slice: Slice::default(),
            ran: vec![0; threads],
            trace: Vec::new(),
        }
    }

    fn dispatch(&mut self) {
        if self.running.is_none() {
            self.running = self.queue.pop_highest();
            self.slice.refill();
        }
    }

    /// A thread becomes ready; it preempts the running one if its priority is higher.
    fn wake(&mut self, thread: u32, prio: u8) {
        match self.running {
            Some((current, cp)) if prio > cp => {
                // The preempted thread keeps its turn; it gets a fresh slice when it resumes.
                self.queue.push_front(current, cp).unwrap();
                self.running = None;
                self.queue.push_back(thread, prio).unwrap();
            }
            _ => self.queue.push_back(thread, prio).unwrap(),
        }
        self.dispatch();
    }

    /// The running thread blocks.
    fn block(&mut self) -> Option<u32> {
        let (thread, _) = self.running.take()?;
        self.dispatch();
        Some(thread)
    }

    fn tick(&mut self) {
        let Some((thread, prio)) = self.running else {
            return;
        };
        self.ran[thread as usize] += 1;
        self.trace.push(thread);
        if self.slice.tick() {
            self.queue.push_back(thread, prio).unwrap();
            self.running = None;
            self.dispatch();
        }
    }
}

#[test]
fn equal_priorities_share_and_lower_ones_starve() {
    // Threads 0, 1, 2 at priority 20 are always ready; thread 3 at priority 5 is ready too.
    let mut cpu = Cpu::new(4);
    for t in 0..3 {
        cpu.wake(t, 20);
    }
    cpu.wake(3, 5);
    let ticks = 30_000u64;
    for _ in 0..ticks {
        cpu.tick();
    }
    // Round robin: each high thread runs exactly one slice in turn.
    let slice = u64::from(DEFAULT_SLICE_TICKS);
    for t in 0..3 {
        assert_eq!(cpu.ran[t], ticks / 3, "thread {t}");
    }
    for (i, &t) in cpu.trace.iter().enumerate() {
        assert_eq!(u64::from(t), (i as u64 / slice) % 3);
    }
    // Strict priority: the low thread never ran. By design, not by accident.
    assert_eq!(cpu.ran[3], 0);
    assert_eq!(cpu.queue.priority_of(3), Some(5));

    // Once every high thread blocks, the low one runs.
    for _ in 0..3 {
        cpu.block().unwrap();
    }
    cpu.tick();
    assert_eq!(cpu.ran[3], 1);
}

#[test]
fn no_equal_priority_peer_waits_more_than_one_round() {
    let peers = 7u32;
    let mut cpu = Cpu::new(peers as usize);
    for t in 0..peers {
        cpu.wake(t, 31);
    }
    let mut last_run = vec![0u64; peers as usize];
    for now in 1..=10_000u64 {
        cpu.tick();
        let t = *cpu.trace.last().unwrap();
        let gap = now - last_run[t as usize];
        if last_run[t as usize] != 0 {
            // Between two of a thread's ticks, at most every other peer runs one slice.
            assert!(gap <= u64::from(DEFAULT_SLICE_TICKS) * u64::from(peers - 1) + 1);
        }
        last_run[t as usize] = now;
    }
}

#[test]
fn preempted_thread_resumes_before_its_peers() {
    let mut cpu = Cpu::new(4);
    cpu.wake(0, 10);
    cpu.wake(1, 10);
    cpu.wake(2, 10);
    assert_eq!(cpu.running, Some((0, 10)));
    // Thread 3 at a higher priority preempts 0, runs, and blocks.
    cpu.wake(3, 11);
    assert_eq!(cpu.running, Some((3, 11)));
    cpu.tick();
    assert_eq!(cpu.block(), Some(3));
    // 0 kept its place at the head of priority 10.
    assert_eq!(cpu.running, Some((0, 10)));
    cpu.tick();
    cpu.tick();
    assert_eq!(cpu.running, Some((1, 10)));
}

#[test]
fn timed_waits_wake_in_deadline_order() {
    // Threads sleep with deadlines; at each tick the expired ones become ready.
    let mut cpu = Cpu::new(4);
    let mut timeouts = Timeouts::new();
    timeouts.reserve(4).unwrap();
    timeouts.add(0, 5);
    timeouts.add(1, 3);
    timeouts.add(2, 5);
    timeouts.add(3, 9);
    assert!(timeouts.cancel(3));
    let mut woken = Vec::new();
    for now in 0..10 {
        timeouts.expire(now, &mut |t| woken.push((now, t)));
    }
    assert_eq!(woken, [(3, 1), (5, 0), (5, 2)]);
    for &(_, t) in &woken {
        cpu.wake(t, 1);
    }
    assert_eq!(cpu.queue.len(), 2);
    assert_eq!(cpu.running, Some((1, 1)));
}

/// xorshift64*.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

#[test]
fn run_queue_against_a_model() {
    let mut rng = Rng(0xdead_beef_cafe_f00d);
    let mut q = RunQueue::new();
    // The model: one Vec per priority.
    let mut model: Vec<Vec<u32>> = vec![Vec::new(); PRIORITIES];
    for _ in 0..50_000 {
        let item = (rng.next() % 40) as u32;
        let prio = (rng.next() % 34) as u8;
        let queued = model.iter().any(|l| l.contains(&item));
        match rng.next() % 4 {
            0 | 1 => {
                let front = rng.next().is_multiple_of(2);
                let want = if usize::from(prio) >= PRIORITIES {
                    Err(SchedError::BadPriority)
                } else if queued {
                    Err(SchedError::AlreadyQueued)
                } else {
                    let level = &mut model[usize::from(prio)];
                    if front {
                        level.insert(0, item);
                    } else {
                        level.push(item);
                    }
                    Ok(())
                };
                let got = if front {
                    q.push_front(item, prio)
                } else {
                    q.push_back(item, prio)
                };
                assert_eq!(got, want);
            }
            2 => {
                let want = (0..PRIORITIES)
                    .rev()
                    .find(|&p| !model[p].is_empty())
                    .map(|p| (model[p].remove(0), p as u8));
                assert_eq!(q.pop_highest(), want);
            }
            _ => {
                for level in model.iter_mut() {
                    level.retain(|&x| x != item);
                }
                assert_eq!(q.remove(item), queued);
            }
        }
        let len: usize = model.iter().map(Vec::len).sum();
        assert_eq!((q.len(), q.is_empty()), (len, len == 0));
        let top = (0..PRIORITIES).rev().find(|&p| !model[p].is_empty());
        assert_eq!(q.highest_priority(), top.map(|p| p as u8));
    }
}

#[test]
fn timeouts_against_a_model() {
    let mut rng = Rng(0x1234_5678_9abc_def1);
    let mut t = Timeouts::new();
    // The model: (deadline, sequence number, item); expiry order is by (deadline, sequence).
    let mut model: Vec<(u64, u64, u32)> = Vec::new();
    let mut seq = 0;
    let mut now = 0u64;
    for _ in 0..50_000 {
        let item = (rng.next() % 50) as u32;
        match rng.next() % 4 {
            0 | 1 => {
                let deadline = now + rng.next() % 20;
                model.retain(|&(_, _, x)| x != item);
                model.push((deadline, seq, item));
                seq += 1;
                t.add(item, deadline);
            }
            2 => {
                let had = model.iter().any(|&(_, _, x)| x == item);
                model.retain(|&(_, _, x)| x != item);
                assert_eq!(t.cancel(item), had);
            }
            _ => {
                now += rng.next() % 4;
                model.sort();
                let split = model.partition_point(|&(d, _, _)| d <= now);
                let want: Vec<u32> = model.drain(..split).map(|(_, _, x)| x).collect();
                let mut got = Vec::new();
                t.expire(now, &mut |x| got.push(x));
                assert_eq!(got, want);
            }
        }
        assert_eq!(t.len(), model.len());
        assert_eq!(t.next_deadline(), model.iter().map(|&(d, _, _)| d).min());
    }
}
