//! A seeded storm of random operations, many of them invalid, checked after every step against a
//! deliberately simple reference model (maps keyed by place, trees found by scanning).

use std::collections::{BTreeMap, BTreeSet};

use abi::Rights;
use cap::{CapError, CapSystem, Removed, SpaceId};

const OPS: usize = 50_000;
const MAX_NODES: usize = 40;
const MAX_LIVE_SPACES: usize = 6;

/// xorshift64*: small, seedable, good enough to pick operations.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

type Place = (SpaceId, u64);

#[derive(Clone, Debug, PartialEq)]
struct ModelCap {
    object: u32,
    rights: Rights,
    parent: Option<Place>,
}

#[derive(Default)]
struct Model {
    /// Live spaces: number of slots and the capabilities by selector.
    spaces: BTreeMap<SpaceId, (usize, BTreeMap<u64, ModelCap>)>,
}

impl Model {
    fn total(&self) -> usize {
        self.spaces.values().map(|(_, caps)| caps.len()).sum()
    }

    fn find(&self, space: SpaceId, sel: u64) -> Result<&ModelCap, CapError> {
        let (slots, caps) = self.spaces.get(&space).ok_or(CapError::BadSpace)?;
        if sel >= *slots as u64 {
            return Err(CapError::BadSelector);
        }
        caps.get(&sel).ok_or(CapError::Empty)
    }

    fn free(&self, space: SpaceId, sel: u64) -> Result<(), CapError> {
        match self.find(space, sel) {
            Err(CapError::Empty) => Ok(()),
            Ok(_) => Err(CapError::SelectorInUse),
            Err(e) => Err(e),
        }
    }

    fn insert_original(
        &mut self,
        space: SpaceId,
        sel: u64,
        object: u32,
        rights: Rights,
    ) -> Result<(), CapError> {
        self.free(space, sel)?;
        if self.total() >= MAX_NODES {
            return Err(CapError::TooManyCapabilities);
        }
        let cap = ModelCap {
            object,
            rights: rights.intersection(Rights::ALL),
            parent: None,
        };
        self.spaces.get_mut(&space).unwrap().1.insert(sel, cap);
        Ok(())
    }

    fn delegate(&mut self, src: Place, dst: Place, rights: Rights) -> Result<(), CapError> {
        let source = self.find(src.0, src.1)?.clone();
        if !self.spaces.contains_key(&dst.0) {
            return Err(CapError::BadSpace);
        }
        if !source.rights.contains(Rights::GRANT) || !source.rights.contains(rights) {
            return Err(CapError::NoRights);
        }
        self.free(dst.0, dst.1)?;
        if self.total() >= MAX_NODES {
            return Err(CapError::TooManyCapabilities);
        }
        let cap = ModelCap {
            object: source.object,
            rights,
            parent: Some(src),
        };
        self.spaces.get_mut(&dst.0).unwrap().1.insert(dst.1, cap);
        Ok(())
    }

    /// Everything strictly below `root`, found by scanning all parent links.
    fn descendants(&self, root: Place) -> BTreeSet<Place> {
        let mut below = BTreeSet::new();
        let mut frontier = vec![root];
        while let Some(p) = frontier.pop() {
            for (&space, (_, caps)) in &self.spaces {
                for (&sel, cap) in caps {
                    if cap.parent == Some(p) && below.insert((space, sel)) {
                        frontier.push((space, sel));
                    }
                }
            }
        }
        below
    }

    fn revoke(
        &mut self,
        space: SpaceId,
        sel: u64,
        include_self: bool,
        out: &mut Vec<Removed<u32>>,
    ) -> Result<usize, CapError> {
        self.find(space, sel)?;
        let mut gone = self.descendants((space, sel));
        if include_self {
            gone.insert((space, sel));
        }
        for &(s, sel) in &gone {
            let cap = self.spaces.get_mut(&s).unwrap().1.remove(&sel).unwrap();
            out.push(Removed {
                space: s,
                sel,
                object: cap.object,
                original: cap.parent.is_none(),
            });
        }
        Ok(gone.len())
    }

    fn destroy_space(
        &mut self,
        space: SpaceId,
        out: &mut Vec<Removed<u32>>,
    ) -> Result<(), CapError> {
        let (_, caps) = self.spaces.get(&space).ok_or(CapError::BadSpace)?;
        let sels: Vec<u64> = caps.keys().copied().collect();
        for sel in sels {
            if self.find(space, sel).is_ok() {
                self.revoke(space, sel, true, out)?;
            }
        }
        self.spaces.remove(&space);
        Ok(())
    }
}

struct Storm {
    rng: Rng,
    real: CapSystem<u32>,
    model: Model,
    /// Every id ever issued, live or destroyed.
    issued: Vec<SpaceId>,
    next_object: u32,
    /// How often each outcome was seen, to prove the storm reached every path.
    outcomes: BTreeMap<String, usize>,
}

impl Storm {
    fn new(seed: u64) -> Self {
        Self {
            rng: Rng(seed),
            real: CapSystem::new(MAX_NODES),
            model: Model::default(),
            issued: Vec::new(),
            next_object: 1,
            outcomes: BTreeMap::new(),
        }
    }

    fn note<T>(&mut self, op: &str, r: &Result<T, CapError>) {
        let key = match r {
            Ok(_) => format!("{op} ok"),
            Err(e) => format!("{op} {e:?}"),
        };
        *self.outcomes.entry(key).or_default() += 1;
    }

    fn space(&mut self) -> SpaceId {
        let live: Vec<SpaceId> = self.model.spaces.keys().copied().collect();
        match self.rng.below(100) {
            0..=87 if !live.is_empty() => live[self.rng.below(live.len() as u64) as usize],
            0..=97 if !self.issued.is_empty() => {
                self.issued[self.rng.below(self.issued.len() as u64) as usize]
            }
            _ => self.rng.next() as u32,
        }
    }

    fn sel(&mut self, space: SpaceId) -> u64 {
        let slots = self.model.spaces.get(&space).map_or(8, |(n, _)| *n) as u64;
        if self.rng.chance(2) {
            u64::MAX - self.rng.below(2)
        } else {
            self.rng.below(slots + 2)
        }
    }

    fn rights(&mut self) -> Rights {
        let mut bits = (self.rng.next() as u8) & Rights::ALL.0;
        if self.rng.chance(60) {
            bits |= Rights::GRANT.0;
        }
        if self.rng.chance(2) {
            bits |= 0x40;
        }
        Rights(bits)
    }

    /// An existing capability's place, mostly; sometimes any place.
    fn source(&mut self) -> Place {
        let all: Vec<Place> = self
            .model
            .spaces
            .iter()
            .flat_map(|(&s, (_, caps))| caps.keys().map(move |&sel| (s, sel)))
            .collect();
        if !all.is_empty() && self.rng.chance(80) {
            all[self.rng.below(all.len() as u64) as usize]
        } else {
            let s = self.space();
            (s, self.sel(s))
        }
    }

    fn step(&mut self) {
        match self.rng.below(100) {
            0..=3 => {
                if self.model.spaces.len() < MAX_LIVE_SPACES {
                    let slots = 4 + self.rng.below(9) as usize;
                    let id = self.real.create_space(slots).expect("create_space");
                    assert!(!self.issued.contains(&id), "space id {id:#x} reused");
                    self.issued.push(id);
                    self.model.spaces.insert(id, (slots, BTreeMap::new()));
                }
            }
            4 => {
                let s = self.space();
                let before = self.parents();
                let (mut got, mut want) = (Vec::new(), Vec::new());
                let r = self.real.destroy_space(s, &mut |x| got.push(x));
                let m = self.model.destroy_space(s, &mut want);
                assert_eq!(r, m, "destroy_space({s:#x})");
                self.note("destroy", &r);
                check_removed(&before, got, want);
            }
            5..=29 => {
                let s = self.space();
                let sel = self.sel(s);
                let rights = self.rights();
                let object = self.next_object;
                self.next_object += 1;
                let r = self.real.insert_original(s, sel, object, rights);
                let m = self.model.insert_original(s, sel, object, rights);
                assert_eq!(r, m, "insert_original({s:#x}, {sel}, {rights:?})");
                self.note("insert", &r);
            }
            30..=74 => {
                let src = self.source();
                let dst = self.space();
                let dst_sel = self.sel(dst);
                let rights = match self.model.find(src.0, src.1) {
                    Ok(cap) if self.rng.chance(75) => {
                        Rights(cap.rights.0 & (self.rng.next() as u8))
                    }
                    _ => self.rights(),
                };
                let r = self.real.delegate(src.0, src.1, dst, dst_sel, rights);
                let m = self.model.delegate(src, (dst, dst_sel), rights);
                assert_eq!(r, m, "delegate({src:?} -> {dst:#x}:{dst_sel}, {rights:?})");
                self.note("delegate", &r);
            }
            75..=84 => {
                let (s, sel) = self.source();
                let include_self = self.rng.chance(50);
                let before = self.parents();
                let (mut got, mut want) = (Vec::new(), Vec::new());
                let r = self.real.revoke(s, sel, include_self, &mut |x| got.push(x));
                let m = self.model.revoke(s, sel, include_self, &mut want);
                assert_eq!(r, m, "revoke({s:#x}, {sel}, {include_self})");
                self.note("revoke", &r);
                check_removed(&before, got, want);
            }
            _ => {
                let (s, sel) = self.source();
                let needed = self.rights();
                let model = self.model.find(s, sel).map(|c| (c.object, c.rights));
                let r = self.real.get(s, sel).map(|(o, r)| (*o, r));
                assert_eq!(r, model, "get({s:#x}, {sel})");
                let want = model.and_then(|(o, r)| {
                    if r.contains(needed) {
                        Ok(o)
                    } else {
                        Err(CapError::NoRights)
                    }
                });
                let r = self.real.lookup(s, sel, needed).copied();
                assert_eq!(r, want, "lookup({s:#x}, {sel}, {needed:?})");
                self.note("lookup", &r);
            }
        }
    }

    /// Every capability's parent, before an operation that removes some.
    fn parents(&self) -> BTreeMap<Place, Option<Place>> {
        self.model
            .spaces
            .iter()
            .flat_map(|(&s, (_, caps))| caps.iter().map(move |(&sel, c)| ((s, sel), c.parent)))
            .collect()
    }

    fn compare(&self) {
        assert_eq!(self.real.check_invariants(), Ok(()));
        assert_eq!(self.real.nodes_in_use(), self.model.total());
        for &id in &self.issued {
            match self.model.spaces.get(&id) {
                None => {
                    assert_eq!(self.real.count(id), Err(CapError::BadSpace));
                    assert_eq!(self.real.iter_space(id).count(), 0);
                }
                Some((slots, caps)) => {
                    assert_eq!(self.real.slots(id), Ok(*slots));
                    assert_eq!(self.real.count(id), Ok(caps.len()));
                    let real: Vec<_> = self
                        .real
                        .iter_space(id)
                        .map(|(sel, o, r)| (sel, *o, r))
                        .collect();
                    let model: Vec<_> = caps
                        .iter()
                        .map(|(&sel, c)| (sel, c.object, c.rights))
                        .collect();
                    assert_eq!(real, model, "space {id:#x}");
                    for (&sel, cap) in caps {
                        assert_eq!(self.real.parent(id, sel), Ok(cap.parent));
                    }
                }
            }
        }
    }
}

/// Same removals (as sets), each reported once, every one before its parent.
fn check_removed(
    parents: &BTreeMap<Place, Option<Place>>,
    got: Vec<Removed<u32>>,
    mut want: Vec<Removed<u32>>,
) {
    let position: BTreeMap<Place, usize> = got
        .iter()
        .enumerate()
        .map(|(i, r)| ((r.space, r.sel), i))
        .collect();
    assert_eq!(position.len(), got.len(), "a capability reported twice");
    for (i, r) in got.iter().enumerate() {
        if let Some(Some(p)) = parents.get(&(r.space, r.sel)) {
            if let Some(&j) = position.get(p) {
                assert!(i < j, "{r:?} reported after its parent");
            }
        }
    }
    let key = |r: &Removed<u32>| (r.space, r.sel);
    let mut got = got;
    got.sort_by_key(key);
    want.sort_by_key(key);
    assert_eq!(got, want);
}

fn storm(seed: u64) {
    let mut s = Storm::new(seed);
    for _ in 0..OPS {
        s.step();
        s.compare();
    }
    let seen = |key: &str| s.outcomes.get(key).copied().unwrap_or(0);
    for key in [
        "insert ok",
        "insert BadSpace",
        "insert BadSelector",
        "insert SelectorInUse",
        "insert TooManyCapabilities",
        "delegate ok",
        "delegate BadSpace",
        "delegate BadSelector",
        "delegate Empty",
        "delegate NoRights",
        "delegate SelectorInUse",
        "delegate TooManyCapabilities",
        "revoke ok",
        "revoke Empty",
        "destroy ok",
        "destroy BadSpace",
        "lookup ok",
        "lookup NoRights",
    ] {
        assert!(
            seen(key) > 0,
            "storm {seed:#x} never hit `{key}`: {:?}",
            s.outcomes
        );
    }
}

#[test]
fn storm_seed_1() {
    storm(0x9e37_79b9_7f4a_7c15);
}

#[test]
fn storm_seed_2() {
    storm(0x0123_4567_89ab_cdef);
}
