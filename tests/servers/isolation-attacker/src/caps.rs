//! Experiments on capabilities: IPC and transfer, calls without a capability, rights that only
//! shrink, transitive revoke, quota exhaustion.

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

use abi::{well_known, ObjectKind, Rights, Sel, Status};
use isolation::proto;
use rt::{bootstrap, syscall, Error};

use crate::{ensure, ok, refused, Ctx, Outcome, GO};

/// A selector this program never fills.
const EMPTY: Sel = Sel::new(60);
/// Slots the quota experiment may fill: everything free below the storm's zones, and the
/// storm's never-filled zone (the storm runs later).
pub const QUOTA_SELS: [core::ops::Range<u64>; 2] = [80..512, 768..1024];

/// (1) 100 echo round trips, then a call that carries a semaphore capability, which the target
/// must find at its landing slot with exactly the rights sent.
pub fn ping_pong(ctx: &mut Ctx) -> Outcome {
    for i in 0..100u64 {
        let sent = [i, 0xdead_beef, i * 3, u64::MAX];
        let (label, words) = ok("echo", ctx.echo(proto::ECHO, &sent))?;
        ensure!(
            label == 0 && words == [i + 1, 0xdead_beef, i * 3, u64::MAX],
            "round trip {i}: sent {sent:?}, got label {label:#x} words {words:?}"
        );
    }
    const SEM: Sel = Sel::new(20);
    ok("create semaphore", syscall::create_semaphore(SEM, 0))?;
    let rights = Rights::READ | Rights::WRITE;
    ctx.utcb.set_msg(proto::ECHO, &[7]);
    ctx.utcb.attach_cap(SEM, rights);
    let call = ctx.utcb.call_msg(crate::ECHO);
    let (label, word) = (ctx.utcb.label(), ctx.utcb.word(0));
    let _ = syscall::revoke(SEM, true);
    ok("call with a capability", call)?;
    ensure!(
        word == 8,
        "call with a capability: reply word {word}, expected 8"
    );
    let want = (ObjectKind::Semaphore as u8, rights.0);
    ensure!(
        proto::parse_cap_report(label) == Some(want),
        "the target reports {:?} (kind, rights), expected {want:?}",
        proto::parse_cap_report(label)
    );
    Ok("100 round trips; a semaphore arrived with READ|WRITE".into())
}

/// (2) Calls on an empty selector, an out-of-range selector and a semaphore fail; a copy of a
/// portal without CALL cannot be called; init refuses a portal the manifest does not grant.
pub fn no_capability(ctx: &mut Ctx) -> Outcome {
    refused(
        "call on an empty selector",
        ctx.utcb.call(EMPTY, 1, &[]),
        Status::BadSelector,
    )?;
    refused(
        "call on a selector beyond the space",
        ctx.utcb.call(Sel::new(abi::CAP_SPACE_SLOTS + 5), 1, &[]),
        Status::BadSelector,
    )?;
    refused(
        "call on a semaphore",
        ctx.utcb.call(GO, 1, &[]),
        Status::WrongKind,
    )?;

    const PORTAL: Sel = Sel::new(21);
    const NO_CALL: Sel = Sel::new(22);
    ok(
        "create own portal",
        syscall::create_portal(PORTAL, well_known::SELF_THREAD, 99),
    )?;
    let result = (|| {
        ok(
            "copy without CALL",
            syscall::delegate(PORTAL, well_known::SELF_PD, NO_CALL, Rights::GRANT),
        )?;
        let info = ok("lookup the copy", syscall::lookup(NO_CALL))?;
        ensure!(
            info.rights == Rights::GRANT,
            "the copy has rights {:?}",
            info.rights
        );
        refused(
            "call through the copy without CALL",
            ctx.utcb.call(NO_CALL, 1, &[]),
            Status::NoRights,
        )
    })();
    let _ = syscall::revoke(PORTAL, true);
    result?;

    const GOT: Sel = Sel::new(23);
    let got = bootstrap::get(&mut ctx.utcb, "isolation-target.faults", GOT);
    if got.is_ok() {
        let _ = syscall::revoke(GOT, true);
    }
    ensure!(
        got == Err(Error::Reply(Status::NoRights)),
        "asking init for isolation-target.faults (not granted): expected NoRights, got {got:?}"
    );
    let got = bootstrap::get(&mut ctx.utcb, "no-such-server.portal", GOT);
    ensure!(
        got == Err(Error::Reply(Status::BadSelector)),
        "asking init for an unknown portal: expected BadSelector, got {got:?}"
    );
    Ok(String::new())
}

/// (5) Delegation keeps or drops rights, never adds them; a capability without GRANT cannot
/// be passed on, by delegation or through IPC; rights are enforced on use.
pub fn rights(ctx: &mut Ctx) -> Outcome {
    const SEM: Sel = Sel::new(30);
    const READ_GRANT: Sel = Sel::new(31);
    const READ_ONLY: Sel = Sel::new(32);
    const DEST: Sel = Sel::new(33);
    ok("create semaphore", syscall::create_semaphore(SEM, 0))?;
    let result = (|| {
        let me = well_known::SELF_PD;
        ok(
            "delegate READ|GRANT",
            syscall::delegate(SEM, me, READ_GRANT, Rights::READ | Rights::GRANT),
        )?;
        refused(
            "delegate READ|WRITE from a READ|GRANT copy",
            syscall::delegate(READ_GRANT, me, DEST, Rights::READ | Rights::WRITE),
            Status::NoRights,
        )?;
        refused(
            "delegate with an undefined rights bit",
            syscall::delegate(READ_GRANT, me, DEST, Rights(0x80)),
            Status::BadArgument,
        )?;
        ok(
            "delegate READ from a READ|GRANT copy",
            syscall::delegate(READ_GRANT, me, READ_ONLY, Rights::READ),
        )?;
        let info = ok("lookup the READ copy", syscall::lookup(READ_ONLY))?;
        ensure!(
            info.rights == Rights::READ,
            "the READ copy has {:?}",
            info.rights
        );
        refused(
            "delegate from a copy without GRANT",
            syscall::delegate(READ_ONLY, me, DEST, Rights::READ),
            Status::NoRights,
        )?;
        refused(
            "signal (needs WRITE) through the READ copy",
            syscall::sem_up(READ_ONLY),
            Status::NoRights,
        )?;
        ctx.utcb.set_msg(proto::ECHO, &[1]);
        ctx.utcb.attach_cap(READ_ONLY, Rights::READ);
        refused(
            "send a copy without GRANT through IPC",
            ctx.utcb.call_msg(crate::ECHO),
            Status::NoRights,
        )?;
        ctx.utcb.set_msg(proto::ECHO, &[1]);
        ctx.utcb
            .attach_cap(READ_GRANT, Rights::READ | Rights::WRITE | Rights::GRANT);
        refused(
            "send READ|WRITE of a READ|GRANT copy through IPC",
            ctx.utcb.call_msg(crate::ECHO),
            Status::NoRights,
        )?;
        Ok(String::new())
    })();
    let _ = syscall::revoke(SEM, true);
    result
}

/// (6) A chain SEM -> A -> B -> C in this domain plus a copy held by the target: revoking SEM's
/// derivations removes all of them (lookups and uses fail, the target's copy is gone too), and
/// SEM itself keeps working.
pub fn revoke(ctx: &mut Ctx) -> Outcome {
    const SEM: Sel = Sel::new(40);
    const A: Sel = Sel::new(41);
    const B: Sel = Sel::new(42);
    const C: Sel = Sel::new(43);
    ok("create semaphore", syscall::create_semaphore(SEM, 1))?;
    let result = (|| {
        let me = well_known::SELF_PD;
        ok(
            "delegate SEM -> A",
            syscall::delegate(SEM, me, A, Rights::ALL),
        )?;
        ok("delegate A -> B", syscall::delegate(A, me, B, Rights::ALL))?;
        ok(
            "delegate B -> C",
            syscall::delegate(B, me, C, Rights::READ | Rights::GRANT),
        )?;
        ctx.utcb.set_msg(proto::HOLD, &[]);
        ctx.utcb.attach_cap(C, Rights::READ);
        ok("send C to the target", ctx.utcb.call_msg(crate::ECHO))?;
        ok("the target keeps C", ctx.utcb.reply_status())?;
        let (_, held) = ok("probe the target's copy", ctx.echo(proto::PROBE_HOLD, &[]))?;
        ensure!(
            held == [
                Status::Ok as u64,
                ObjectKind::Semaphore as u64,
                u64::from(Rights::READ.0)
            ],
            "the target's copy before revoke: {held:?}"
        );
        let removed = ok("revoke SEM's derivations", syscall::revoke(SEM, false))?;
        for (name, sel) in [("A", A), ("B", B), ("C", C)] {
            refused(
                &format!("lookup {name} after revoke"),
                syscall::lookup(sel),
                Status::BadSelector,
            )?;
        }
        refused(
            "wait on B after revoke",
            syscall::sem_down(B, 1),
            Status::BadSelector,
        )?;
        let (_, held) = ok("probe the target's copy", ctx.echo(proto::PROBE_HOLD, &[]))?;
        ensure!(
            held.first() == Some(&(Status::BadSelector as u64)),
            "the target's copy survived the revoke: {held:?}"
        );
        let info = ok("lookup SEM after revoke", syscall::lookup(SEM))?;
        ensure!(
            info.kind() == Some(ObjectKind::Semaphore) && info.rights == Rights::ALL,
            "SEM after revoke: {info:?}"
        );
        ok("wait on SEM (count 1)", syscall::sem_down(SEM, 1))?;
        ok("revoke SEM itself", syscall::revoke(SEM, true))?;
        refused(
            "lookup SEM after revoking it",
            syscall::lookup(SEM),
            Status::BadSelector,
        )?;
        Ok(format!("{removed} capabilities removed, one in the target"))
    })();
    let _ = syscall::revoke(SEM, true);
    result
}

/// (7) Semaphores until the quota says no: the refusal is `QuotaExceeded`, the system still
/// answers, and revoking them gives the quota back.
pub fn quota(ctx: &mut Ctx) -> Outcome {
    let mut made: Vec<Sel> = Vec::new();
    let mut refusal = None;
    for sel in QUOTA_SELS.iter().cloned().flatten().map(Sel::new) {
        match syscall::create_semaphore(sel, 0) {
            Ok(()) => made.push(sel),
            Err(e) => {
                refusal = Some((sel, e));
                break;
            }
        }
    }
    let result = (|| {
        let Some((sel, error)) = refusal else {
            return Err(format!(
                "the quota outlasted {} selectors (is the attacker's quota too large?)",
                made.len()
            ));
        };
        ensure!(
            error == Error::Kernel(Status::QuotaExceeded),
            "creating semaphore {} refused with {error}, expected quota exceeded",
            made.len() + 1
        );
        ensure!(!made.is_empty(), "not even one semaphore could be created");
        refused(
            "creating again at the limit",
            syscall::create_semaphore(sel, 0),
            Status::QuotaExceeded,
        )?;
        let (_, words) = ok("echo at the limit", ctx.echo(proto::ECHO, &[41]))?;
        ensure!(words == [42], "echo at the limit answered {words:?}");
        Ok(sel)
    })();
    for &sel in &made {
        if let Err(e) = syscall::revoke(sel, true) {
            return Err(format!("revoking semaphore at {sel}: {e}"));
        }
    }
    let free = result?;
    let again = syscall::create_semaphore(free, 0);
    let _ = syscall::revoke(free, true);
    let n = made.len();
    ensure!(
        again.is_ok(),
        "{n} semaphores until quota exceeded; after revoking them all, creating one failed \
         ({again:?}): the quota was not given back"
    );
    Ok(format!(
        "{n} semaphores until quota exceeded, quota back after revoke"
    ))
}
