use alloc::vec;
use alloc::vec::Vec;

use abi::{Rights, Status};

use crate::{CapError, CapSystem, Removed, SpaceId, MAX_SPACES};

const R: Rights = Rights::READ;
const W: Rights = Rights::WRITE;
const G: Rights = Rights::GRANT;
const RWG: Rights = Rights(Rights::READ.0 | Rights::WRITE.0 | Rights::GRANT.0);

type Snapshot = Vec<Vec<(u64, u32, Rights)>>;

fn snapshot(cs: &CapSystem<u32>, spaces: &[SpaceId]) -> Snapshot {
    spaces
        .iter()
        .map(|&s| cs.iter_space(s).map(|(sel, o, r)| (sel, *o, r)).collect())
        .collect()
}

fn ok(cs: &CapSystem<u32>) {
    assert_eq!(cs.check_invariants(), Ok(()));
}

/// Revokes and returns what was removed, in callback order.
fn revoke(cs: &mut CapSystem<u32>, s: SpaceId, sel: u64, me: bool) -> Vec<Removed<u32>> {
    let mut out = Vec::new();
    let n = cs.revoke(s, sel, me, &mut |r| out.push(r)).unwrap();
    assert_eq!(n, out.len());
    ok(cs);
    out
}

fn destroy(cs: &mut CapSystem<u32>, s: SpaceId) -> Vec<Removed<u32>> {
    let mut out = Vec::new();
    cs.destroy_space(s, &mut |r| out.push(r)).unwrap();
    ok(cs);
    out
}

fn setup(spaces: usize) -> (CapSystem<u32>, Vec<SpaceId>) {
    let mut cs = CapSystem::new(1000);
    let ids = (0..spaces).map(|_| cs.create_space(16).unwrap()).collect();
    (cs, ids)
}

#[test]
fn insert_get_lookup() {
    let (mut cs, s) = setup(1);
    cs.insert_original(s[0], 3, 77, RWG).unwrap();
    assert_eq!(cs.get(s[0], 3), Ok((&77, RWG)));
    assert_eq!(cs.lookup(s[0], 3, R), Ok(&77));
    assert_eq!(cs.lookup(s[0], 3, R | W), Ok(&77));
    assert_eq!(cs.lookup(s[0], 3, Rights::NONE), Ok(&77));
    assert_eq!(cs.lookup(s[0], 3, Rights::EXEC), Err(CapError::NoRights));
    assert_eq!(
        cs.lookup(s[0], 3, R | Rights::CALL),
        Err(CapError::NoRights)
    );
    assert_eq!((cs.count(s[0]), cs.nodes_in_use()), (Ok(1), 1));
    assert_eq!(cs.parent(s[0], 3), Ok(None));
    assert_eq!(
        cs.insert_original(s[0], 3, 78, R),
        Err(CapError::SelectorInUse)
    );
    assert_eq!(cs.get(s[0], 3), Ok((&77, RWG)));
    ok(&cs);
}

#[test]
fn undefined_rights_bits_are_dropped_or_refused() {
    let (mut cs, s) = setup(2);
    cs.insert_original(s[0], 0, 1, Rights(0xff)).unwrap();
    assert_eq!(cs.get(s[0], 0), Ok((&1, Rights::ALL)));
    assert_eq!(
        cs.delegate(s[0], 0, s[1], 0, Rights(0x80)),
        Err(CapError::NoRights)
    );
    assert_eq!(cs.count(s[1]), Ok(0));
}

#[test]
fn delegated_rights_only_shrink() {
    let (mut cs, s) = setup(2);
    cs.insert_original(s[0], 0, 5, RWG).unwrap();
    // Subset, equal set and the empty set are fine.
    cs.delegate(s[0], 0, s[1], 0, R).unwrap();
    cs.delegate(s[0], 0, s[1], 1, RWG).unwrap();
    cs.delegate(s[0], 0, s[1], 2, Rights::NONE).unwrap();
    assert_eq!(cs.get(s[1], 0), Ok((&5, R)));
    assert_eq!(cs.get(s[1], 1), Ok((&5, RWG)));
    assert_eq!(cs.get(s[1], 2), Ok((&5, Rights::NONE)));
    // A superset is refused.
    assert_eq!(
        cs.delegate(s[0], 0, s[1], 3, RWG | Rights::EXEC),
        Err(CapError::NoRights)
    );
    // A copy without GRANT cannot be delegated, not even with fewer rights.
    assert_eq!(cs.delegate(s[1], 0, s[0], 5, R), Err(CapError::NoRights));
    assert_eq!(
        cs.delegate(s[1], 2, s[0], 5, Rights::NONE),
        Err(CapError::NoRights)
    );
    // A copy with GRANT can, but only within its own rights.
    cs.delegate(s[1], 1, s[0], 5, R | G).unwrap();
    assert_eq!(
        cs.delegate(s[0], 5, s[1], 6, R | W),
        Err(CapError::NoRights)
    );
    cs.delegate(s[0], 5, s[1], 6, R).unwrap();
    assert_eq!(cs.lookup(s[1], 6, W), Err(CapError::NoRights));
    assert_eq!(cs.parent(s[1], 6), Ok(Some((s[0], 5))));
    assert_eq!(cs.parent(s[0], 5), Ok(Some((s[1], 1))));
    assert_eq!(cs.nodes_in_use(), 6);
    ok(&cs);
}

#[test]
fn delegate_to_occupied_slot_or_onto_itself() {
    let (mut cs, s) = setup(2);
    cs.insert_original(s[0], 0, 1, RWG).unwrap();
    cs.insert_original(s[1], 4, 2, RWG).unwrap();
    assert_eq!(
        cs.delegate(s[0], 0, s[1], 4, R),
        Err(CapError::SelectorInUse)
    );
    assert_eq!(
        cs.delegate(s[0], 0, s[0], 0, R),
        Err(CapError::SelectorInUse)
    );
    assert_eq!(cs.get(s[1], 4), Ok((&2, RWG)));
    assert_eq!(cs.nodes_in_use(), 2);
    // Within one space is fine.
    cs.delegate(s[0], 0, s[0], 1, R).unwrap();
    assert_eq!(cs.parent(s[0], 1), Ok(Some((s[0], 0))));
    ok(&cs);
}

#[test]
fn bad_selectors() {
    let (mut cs, s) = setup(2);
    cs.insert_original(s[0], 0, 1, RWG).unwrap();
    for sel in [16, 17, 1 << 32, u64::MAX] {
        assert_eq!(cs.get(s[0], sel), Err(CapError::BadSelector));
        assert_eq!(cs.lookup(s[0], sel, R), Err(CapError::BadSelector));
        assert_eq!(
            cs.insert_original(s[0], sel, 9, R),
            Err(CapError::BadSelector)
        );
        assert_eq!(
            cs.revoke(s[0], sel, true, &mut |_| panic!()),
            Err(CapError::BadSelector)
        );
        assert_eq!(
            cs.delegate(s[0], sel, s[1], 0, R),
            Err(CapError::BadSelector)
        );
        assert_eq!(
            cs.delegate(s[0], 0, s[1], sel, R),
            Err(CapError::BadSelector)
        );
        assert_eq!(cs.parent(s[0], sel), Err(CapError::BadSelector));
    }
    assert_eq!(cs.get(s[0], 1), Err(CapError::Empty));
    assert_eq!(cs.lookup(s[0], 15, Rights::NONE), Err(CapError::Empty));
    assert_eq!(
        cs.revoke(s[0], 1, false, &mut |_| panic!()),
        Err(CapError::Empty)
    );
    assert_eq!(cs.delegate(s[0], 1, s[1], 0, R), Err(CapError::Empty));
    assert_eq!(cs.parent(s[0], 2), Err(CapError::Empty));
    assert_eq!(cs.nodes_in_use(), 1);
    assert_eq!(cs.count(s[1]), Ok(0));
    ok(&cs);
}

#[test]
fn zero_slot_space_has_no_selectors() {
    let mut cs = CapSystem::new(10);
    let s = cs.create_space(0).unwrap();
    assert_eq!(cs.insert_original(s, 0, 1, R), Err(CapError::BadSelector));
    assert_eq!((cs.count(s), cs.slots(s)), (Ok(0), Ok(0)));
    assert_eq!(cs.iter_space(s).count(), 0);
    assert_eq!(destroy(&mut cs, s), vec![]);
}

#[test]
fn huge_space_is_refused_not_aborted() {
    let mut cs = CapSystem::<u32>::new(10);
    assert_eq!(cs.create_space(usize::MAX), Err(CapError::TooManySpaces));
    assert_eq!(
        cs.create_space(usize::MAX / 8),
        Err(CapError::TooManySpaces)
    );
    let s = cs.create_space(1).unwrap();
    assert_eq!(cs.slots(s), Ok(1));
}

#[test]
fn delegate_checks_in_documented_order_and_changes_nothing() {
    let (mut cs, s) = setup(2);
    cs.insert_original(s[0], 0, 1, R).unwrap();
    cs.insert_original(s[1], 0, 2, RWG).unwrap();
    let bad = s[1] + 7;
    let before = snapshot(&cs, &s);
    // Source space before anything else.
    assert_eq!(cs.delegate(bad, 99, bad, 99, R), Err(CapError::BadSpace));
    // Source selector before destination space.
    assert_eq!(cs.delegate(s[0], 99, bad, 0, R), Err(CapError::BadSelector));
    assert_eq!(cs.delegate(s[0], 5, bad, 0, R), Err(CapError::Empty));
    // Destination space before rights.
    assert_eq!(cs.delegate(s[0], 0, bad, 0, R), Err(CapError::BadSpace));
    // Rights before destination selector.
    assert_eq!(cs.delegate(s[0], 0, s[1], 99, R), Err(CapError::NoRights));
    assert_eq!(cs.delegate(s[0], 0, s[1], 0, R), Err(CapError::NoRights));
    assert_eq!(
        cs.delegate(s[1], 0, s[0], 99, R),
        Err(CapError::BadSelector)
    );
    assert_eq!(
        cs.delegate(s[1], 0, s[0], 0, R),
        Err(CapError::SelectorInUse)
    );
    assert_eq!(snapshot(&cs, &s), before);
    assert_eq!(cs.nodes_in_use(), 2);
    ok(&cs);
}

/// Three spaces; a root with two children whose subtrees cross all three spaces.
///
/// ```text
/// a0 (orig 1)
/// ├── b0 ── c0 ── a1
/// │         └──── b1
/// └── c5 ── b5 ── c6
/// ```
fn tree() -> (CapSystem<u32>, Vec<SpaceId>) {
    let (mut cs, s) = setup(3);
    let (a, b, c) = (s[0], s[1], s[2]);
    cs.insert_original(a, 0, 1, RWG).unwrap();
    cs.delegate(a, 0, b, 0, RWG).unwrap();
    cs.delegate(b, 0, c, 0, RWG).unwrap();
    cs.delegate(c, 0, a, 1, R).unwrap();
    cs.delegate(c, 0, b, 1, R | G).unwrap();
    cs.delegate(a, 0, c, 5, R | G).unwrap();
    cs.delegate(c, 5, b, 5, R | G).unwrap();
    cs.delegate(b, 5, c, 6, R).unwrap();
    ok(&cs);
    (cs, s)
}

fn places(removed: &[Removed<u32>]) -> Vec<(SpaceId, u64)> {
    let mut p: Vec<_> = removed.iter().map(|r| (r.space, r.sel)).collect();
    p.sort();
    p
}

#[test]
fn revoke_removes_all_generations_across_spaces_and_spares_siblings() {
    let (mut cs, s) = tree();
    let (a, b, c) = (s[0], s[1], s[2]);
    let out = revoke(&mut cs, b, 0, true);
    assert_eq!(places(&out), vec![(a, 1), (b, 0), (b, 1), (c, 0)]);
    assert!(out.iter().all(|r| r.object == 1 && !r.original));
    // The other subtree and the root are untouched.
    assert_eq!(cs.get(a, 0), Ok((&1, RWG)));
    assert_eq!(cs.get(c, 5), Ok((&1, R | G)));
    assert_eq!(cs.get(b, 5), Ok((&1, R | G)));
    assert_eq!(cs.get(c, 6), Ok((&1, R)));
    assert_eq!(cs.parent(c, 6), Ok(Some((b, 5))));
    for (sp, sel) in [(a, 1), (b, 0), (b, 1), (c, 0)] {
        assert_eq!(cs.get(sp, sel), Err(CapError::Empty));
    }
    assert_eq!(
        (cs.count(a), cs.count(b), cs.count(c)),
        (Ok(1), Ok(1), Ok(2))
    );
    assert_eq!(cs.nodes_in_use(), 4);
}

#[test]
fn revoke_reports_descendants_before_ancestors() {
    let (mut cs, s) = tree();
    let out = revoke(&mut cs, s[0], 0, true);
    assert_eq!(out.len(), 8);
    let pos = |sp: SpaceId, sel: u64| {
        out.iter()
            .position(|r| (r.space, r.sel) == (sp, sel))
            .unwrap()
    };
    let (a, b, c) = (s[0], s[1], s[2]);
    assert!(pos(a, 1) < pos(c, 0) && pos(b, 1) < pos(c, 0));
    assert!(pos(c, 0) < pos(b, 0) && pos(b, 0) < pos(a, 0));
    assert!(pos(c, 6) < pos(b, 5) && pos(b, 5) < pos(c, 5));
    assert_eq!(
        out.last().map(|r| (r.space, r.sel, r.original)),
        Some((a, 0, true))
    );
    assert_eq!(out.iter().filter(|r| r.original).count(), 1);
    assert_eq!(cs.nodes_in_use(), 0);
}

#[test]
fn revoke_without_self_keeps_the_node() {
    let (mut cs, s) = tree();
    let out = revoke(&mut cs, s[0], 0, false);
    assert_eq!(out.len(), 7);
    assert!(out.iter().all(|r| !r.original));
    assert_eq!(cs.get(s[0], 0), Ok((&1, RWG)));
    assert_eq!(cs.nodes_in_use(), 1);
    // Again: nothing left to remove.
    assert_eq!(revoke(&mut cs, s[0], 0, false), vec![]);
    // A leaf without self removes nothing.
    cs.delegate(s[0], 0, s[1], 9, R).unwrap();
    assert_eq!(revoke(&mut cs, s[1], 9, false), vec![]);
    assert_eq!(cs.get(s[1], 9), Ok((&1, R)));
}

#[test]
fn revoke_a_middle_sibling() {
    let (mut cs, s) = setup(2);
    cs.insert_original(s[0], 0, 1, RWG).unwrap();
    for sel in 0..5 {
        cs.delegate(s[0], 0, s[1], sel, RWG).unwrap();
        cs.delegate(s[1], sel, s[1], sel + 8, R).unwrap();
    }
    let out = revoke(&mut cs, s[1], 2, true);
    assert_eq!(places(&out), vec![(s[1], 2), (s[1], 10)]);
    let out = revoke(&mut cs, s[1], 0, true);
    assert_eq!(places(&out), vec![(s[1], 0), (s[1], 8)]);
    let out = revoke(&mut cs, s[1], 4, true);
    assert_eq!(places(&out), vec![(s[1], 4), (s[1], 12)]);
    assert_eq!(cs.count(s[1]), Ok(4));
    let out = revoke(&mut cs, s[0], 0, false);
    assert_eq!(
        places(&out),
        vec![(s[1], 1), (s[1], 3), (s[1], 9), (s[1], 11)]
    );
}

#[test]
fn revoked_slots_can_be_reused() {
    let (mut cs, s) = tree();
    let before = snapshot(&cs, &s);
    revoke(&mut cs, s[0], 0, true);
    assert_eq!(snapshot(&cs, &s), vec![vec![], vec![], vec![]]);
    // Rebuild the same shape in the same slots with another object.
    let (a, b, c) = (s[0], s[1], s[2]);
    cs.insert_original(a, 0, 2, RWG).unwrap();
    cs.delegate(a, 0, b, 0, RWG).unwrap();
    cs.delegate(b, 0, c, 0, RWG).unwrap();
    cs.delegate(c, 0, a, 1, R).unwrap();
    cs.delegate(c, 0, b, 1, R | G).unwrap();
    cs.delegate(a, 0, c, 5, R | G).unwrap();
    cs.delegate(c, 5, b, 5, R | G).unwrap();
    cs.delegate(b, 5, c, 6, R).unwrap();
    let after: Snapshot = before
        .iter()
        .map(|sp| sp.iter().map(|&(sel, _, r)| (sel, 2, r)).collect())
        .collect();
    assert_eq!(snapshot(&cs, &s), after);
    assert_eq!(cs.nodes_in_use(), 8);
    ok(&cs);
}

#[test]
fn destroy_space_revokes_what_it_delegated_elsewhere() {
    let (mut cs, s) = tree();
    let (a, b, c) = (s[0], s[1], s[2]);
    cs.insert_original(b, 15, 2, RWG).unwrap();
    cs.delegate(b, 15, a, 15, R).unwrap();
    let out = destroy(&mut cs, b);
    // b's own caps, their subtrees in a and c, and b's original of object 2 with its copy.
    assert_eq!(
        places(&out),
        vec![
            (a, 1),
            (a, 15),
            (b, 0),
            (b, 1),
            (b, 5),
            (b, 15),
            (c, 0),
            (c, 6)
        ]
    );
    let originals: Vec<_> = out
        .iter()
        .filter(|r| r.original)
        .map(|r| r.object)
        .collect();
    assert_eq!(originals, vec![2]);
    // What b's caps were derived from stays.
    assert_eq!(cs.get(a, 0), Ok((&1, RWG)));
    assert_eq!(cs.get(c, 5), Ok((&1, R | G)));
    assert_eq!((cs.count(a), cs.count(c)), (Ok(1), Ok(1)));
    assert_eq!(cs.nodes_in_use(), 2);
    assert_eq!(cs.count(b), Err(CapError::BadSpace));
}

#[test]
fn destroy_space_with_copies_inside_itself() {
    let (mut cs, s) = setup(1);
    cs.insert_original(s[0], 9, 1, RWG).unwrap();
    cs.delegate(s[0], 9, s[0], 2, RWG).unwrap();
    cs.delegate(s[0], 2, s[0], 12, R).unwrap();
    let out = destroy(&mut cs, s[0]);
    assert_eq!(out.len(), 3);
    assert_eq!(out.last().map(|r| (r.sel, r.original)), Some((9, true)));
    assert_eq!(cs.nodes_in_use(), 0);
}

#[test]
fn stale_space_id_is_refused() {
    let (mut cs, s) = setup(2);
    cs.insert_original(s[0], 0, 1, RWG).unwrap();
    let old = s[1];
    destroy(&mut cs, old);
    let new = cs.create_space(16).unwrap();
    assert_ne!(new, old);
    cs.insert_original(new, 0, 2, RWG).unwrap();
    assert_eq!(cs.get(old, 0), Err(CapError::BadSpace));
    assert_eq!(cs.lookup(old, 0, R), Err(CapError::BadSpace));
    assert_eq!(cs.count(old), Err(CapError::BadSpace));
    assert_eq!(cs.slots(old), Err(CapError::BadSpace));
    assert_eq!(cs.insert_original(old, 1, 3, R), Err(CapError::BadSpace));
    assert_eq!(cs.delegate(s[0], 0, old, 1, R), Err(CapError::BadSpace));
    assert_eq!(cs.delegate(old, 0, s[0], 1, R), Err(CapError::BadSpace));
    assert_eq!(
        cs.revoke(old, 0, true, &mut |_| panic!()),
        Err(CapError::BadSpace)
    );
    assert_eq!(
        cs.destroy_space(old, &mut |_| panic!()),
        Err(CapError::BadSpace)
    );
    assert_eq!(cs.iter_space(old).count(), 0);
    assert_eq!(cs.get(new, 0), Ok((&2, RWG)));
    // Ids that were never issued.
    for bogus in [new + 1, new ^ 0x0001_0000, u32::MAX] {
        assert_eq!(cs.count(bogus), Err(CapError::BadSpace));
    }
    ok(&cs);
}

#[test]
fn space_ids_never_repeat_and_exhausted_indices_retire() {
    let mut cs = CapSystem::<u32>::new(4);
    let keep = cs.create_space(1).unwrap();
    let mut seen = alloc::collections::BTreeSet::new();
    seen.insert(keep);
    // One index cycles through all 65536 generations and is then retired.
    for _ in 0..(1 << 16) {
        let s = cs.create_space(1).unwrap();
        assert!(seen.insert(s), "space id {s:#x} issued twice");
        cs.destroy_space(s, &mut |_| {}).unwrap();
    }
    let next = cs.create_space(1).unwrap();
    assert!(seen.insert(next));
    assert_eq!(next & 0xffff, 2, "the retired index is not reused");
    assert_eq!(cs.count(keep), Ok(0));
}

#[test]
fn too_many_spaces() {
    let mut cs = CapSystem::<u32>::new(4);
    let ids: Vec<_> = (0..MAX_SPACES)
        .map(|_| cs.create_space(0).unwrap())
        .collect();
    assert_eq!(cs.create_space(0), Err(CapError::TooManySpaces));
    cs.destroy_space(ids[100], &mut |_| {}).unwrap();
    let again = cs.create_space(0).unwrap();
    assert_ne!(again, ids[100]);
    assert_eq!(again & 0xffff, ids[100] & 0xffff);
}

#[test]
fn arena_limit_refuses_and_changes_nothing() {
    let mut cs = CapSystem::new(3);
    let s: Vec<_> = (0..2).map(|_| cs.create_space(8).unwrap()).collect();
    cs.insert_original(s[0], 0, 1, RWG).unwrap();
    cs.delegate(s[0], 0, s[1], 0, RWG).unwrap();
    cs.insert_original(s[1], 1, 2, RWG).unwrap();
    let before = snapshot(&cs, &s);
    assert_eq!(
        cs.insert_original(s[0], 1, 3, R),
        Err(CapError::TooManyCapabilities)
    );
    assert_eq!(
        cs.delegate(s[0], 0, s[1], 2, R),
        Err(CapError::TooManyCapabilities)
    );
    assert_eq!(snapshot(&cs, &s), before);
    assert_eq!(
        (cs.nodes_in_use(), cs.count(s[0]), cs.count(s[1])),
        (3, Ok(1), Ok(2))
    );
    ok(&cs);
    // Room again after a revoke, and the freed node is reused.
    revoke(&mut cs, s[1], 1, true);
    cs.delegate(s[0], 0, s[1], 2, R).unwrap();
    assert_eq!(cs.nodes_in_use(), 3);
    ok(&cs);

    let mut none = CapSystem::new(0);
    let sp = none.create_space(4).unwrap();
    assert_eq!(
        none.insert_original(sp, 0, 1, R),
        Err(CapError::TooManyCapabilities)
    );
}

#[test]
fn original_flag() {
    let (mut cs, s) = setup(2);
    cs.insert_original(s[0], 0, 1, RWG).unwrap();
    cs.insert_original(s[1], 0, 2, RWG).unwrap();
    cs.delegate(s[0], 0, s[1], 1, RWG).unwrap();
    cs.delegate(s[1], 0, s[0], 1, RWG).unwrap();
    let out = revoke(&mut cs, s[1], 1, true);
    assert_eq!(
        out,
        vec![Removed {
            space: s[1],
            sel: 1,
            object: 1,
            original: false
        }]
    );
    let out = revoke(&mut cs, s[1], 0, true);
    assert_eq!(
        out.iter()
            .map(|r| (r.sel, r.object, r.original))
            .collect::<Vec<_>>(),
        vec![(1, 2, false), (0, 2, true)]
    );
    let out = destroy(&mut cs, s[0]);
    assert_eq!(
        out,
        vec![Removed {
            space: s[0],
            sel: 0,
            object: 1,
            original: true
        }]
    );
}

#[test]
fn iter_space_lists_in_selector_order() {
    let (mut cs, s) = setup(1);
    cs.insert_original(s[0], 7, 70, R).unwrap();
    cs.insert_original(s[0], 2, 20, W).unwrap();
    cs.insert_original(s[0], 15, 150, G).unwrap();
    let all: Vec<_> = cs
        .iter_space(s[0])
        .map(|(sel, o, r)| (sel, *o, r))
        .collect();
    assert_eq!(all, vec![(2, 20, W), (7, 70, R), (15, 150, G)]);
}

#[test]
fn errors_map_to_status() {
    let pairs = [
        (CapError::BadSpace, Status::BadSelector),
        (CapError::BadSelector, Status::BadSelector),
        (CapError::Empty, Status::BadSelector),
        (CapError::SelectorInUse, Status::SelectorInUse),
        (CapError::NoRights, Status::NoRights),
        (CapError::TooManyCapabilities, Status::OutOfMemory),
        (CapError::TooManySpaces, Status::OutOfMemory),
    ];
    for (e, status) in pairs {
        assert_eq!(Status::from(e), status);
    }
}

#[test]
fn derive_names_a_new_object_and_is_revoked_with_its_source() {
    let (mut cs, s) = setup(2);
    cs.insert_original(s[0], 1, 100, RWG).unwrap();
    // A narrower object, fewer rights, into another space.
    cs.derive(s[0], 1, s[1], 7, 101, R).unwrap();
    assert_eq!(cs.get(s[1], 7).unwrap(), (&101, R));
    // Rights may not grow; the source needs GRANT.
    assert_eq!(
        cs.derive(s[0], 1, s[1], 8, 102, Rights::ALL),
        Err(CapError::NoRights)
    );
    assert_eq!(cs.derive(s[1], 7, s[1], 8, 103, R), Err(CapError::NoRights));
    let removed = revoke(&mut cs, s[0], 1, false);
    assert_eq!(removed.len(), 1);
    assert_eq!(removed[0].object, 101);
    assert!(!removed[0].original);
    assert_eq!(cs.get(s[1], 7), Err(CapError::Empty));
}
