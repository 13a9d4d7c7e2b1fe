//! Trees far deeper and wider than a kernel stack could recurse over.

use abi::Rights;
use cap::{CapSystem, SpaceId};

const N: u64 = 100_000;
/// A kernel-sized stack: recursion over 100k levels would overflow it many times over.
const STACK: usize = 64 * 1024;

fn on_small_stack(f: impl FnOnce() + Send + 'static) {
    std::thread::Builder::new()
        .stack_size(STACK)
        .spawn(f)
        .expect("spawn")
        .join()
        .expect("the test thread panicked or overflowed its stack");
}

/// A chain of `N` delegations alternating between two spaces: a[0] -> b[0] -> a[1] -> b[1] ...
fn chain() -> (CapSystem<u64>, SpaceId, SpaceId) {
    let mut cs = CapSystem::new(usize::try_from(N).unwrap() + 1);
    let slots = usize::try_from(N / 2 + 1).unwrap();
    let a = cs.create_space(slots).unwrap();
    let b = cs.create_space(slots).unwrap();
    cs.insert_original(a, 0, 42, Rights::ALL).unwrap();
    let (mut space, mut sel) = (a, 0);
    for i in 0..N {
        let (dst, dst_sel) = if i % 2 == 0 {
            (b, i / 2)
        } else {
            (a, i / 2 + 1)
        };
        cs.delegate(space, sel, dst, dst_sel, Rights::ALL).unwrap();
        (space, sel) = (dst, dst_sel);
    }
    assert_eq!(cs.nodes_in_use(), usize::try_from(N).unwrap() + 1);
    (cs, a, b)
}

#[test]
fn revoke_of_a_100k_deep_chain() {
    on_small_stack(|| {
        let (mut cs, a, b) = chain();
        let mut removed = 0u64;
        let mut last = None;
        let n = cs
            .revoke(a, 0, true, &mut |r| {
                removed += 1;
                last = Some((r.space, r.sel, r.original));
            })
            .unwrap();
        assert_eq!(n as u64, N + 1);
        assert_eq!(removed, N + 1);
        assert_eq!(last, Some((a, 0, true)));
        assert_eq!(
            (cs.nodes_in_use(), cs.count(a), cs.count(b)),
            (0, Ok(0), Ok(0))
        );
        cs.check_invariants().unwrap();
    });
}

#[test]
fn revoke_of_the_middle_of_a_deep_chain_keeps_the_top() {
    on_small_stack(|| {
        let (mut cs, _a, b) = chain();
        // b[N/4] is node 2*(N/4)+1 of the chain (counting the original as 0).
        let n = cs.revoke(b, N / 4, false, &mut |_| {}).unwrap() as u64;
        assert_eq!(n, N - (2 * (N / 4) + 1));
        assert_eq!(cs.nodes_in_use() as u64, 2 * (N / 4) + 2);
        cs.check_invariants().unwrap();
    });
}

#[test]
fn destroy_space_of_a_deep_chain() {
    on_small_stack(|| {
        let (mut cs, a, b) = chain();
        // Destroying b cuts the chain below a[0]: everything but the original goes.
        let mut originals = 0;
        cs.destroy_space(b, &mut |r| originals += usize::from(r.original))
            .unwrap();
        assert_eq!(originals, 0);
        assert_eq!((cs.nodes_in_use(), cs.count(a)), (1, Ok(1)));
        cs.destroy_space(a, &mut |r| originals += usize::from(r.original))
            .unwrap();
        assert_eq!((originals, cs.nodes_in_use()), (1, 0));
    });
}

#[test]
fn wide_and_deep_tree_and_drop() {
    on_small_stack(|| {
        // A root with 50k children, each child's first grandchild chain 1 deep, plus a 50k chain
        // hanging off the last child; then dropping the whole system must not recurse either.
        let mut cs = CapSystem::new(200_000);
        let s = cs.create_space(150_001).unwrap();
        cs.insert_original(s, 0, 1u32, Rights::ALL).unwrap();
        for i in 1..=50_000 {
            cs.delegate(s, 0, s, i, Rights::ALL).unwrap();
        }
        let mut at = 50_000;
        for i in 50_001..=100_000 {
            cs.delegate(s, at, s, i, Rights::ALL).unwrap();
            at = i;
        }
        assert_eq!(cs.revoke(s, 0, false, &mut |_| {}), Ok(100_000));
        for i in 1..=100_000 {
            cs.delegate(s, 0, s, i, Rights::READ | Rights::GRANT)
                .unwrap();
        }
        drop(cs);
    });
}
