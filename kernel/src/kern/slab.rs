//! Object tables: a vector of slots with generation counters, so that a stale id of a destroyed
//! object never reaches the object that reuses its slot.

use alloc::vec::Vec;
use core::marker::PhantomData;

/// Id of an object in a [`Slab`]: slot index and generation.
pub struct Id<T> {
    index: u32,
    generation: u32,
    _kind: PhantomData<fn() -> T>,
}

impl<T> Id<T> {
    /// A number for logs and badges.
    pub fn raw(self) -> u64 {
        (u64::from(self.generation) << 32) | u64::from(self.index)
    }
}

impl<T> Clone for Id<T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T> Copy for Id<T> {}
impl<T> PartialEq for Id<T> {
    fn eq(&self, other: &Self) -> bool {
        self.index == other.index && self.generation == other.generation
    }
}
impl<T> Eq for Id<T> {}
impl<T> core::fmt::Debug for Id<T> {
    fn fmt(&self, f: &mut core::fmt::Formatter) -> core::fmt::Result {
        write!(f, "#{}.{}", self.index, self.generation)
    }
}

struct Slot<T> {
    generation: u32,
    value: Option<T>,
}

/// A table of `T`s whose ids are `Id<K>` (`K` a marker kind of `ids`, so that object types can
/// name each other's ids without naming each other).
pub struct Slab<T, K> {
    slots: Vec<Slot<T>>,
    free: Vec<u32>,
    _kind: PhantomData<fn() -> K>,
}

impl<T, K> Slab<T, K> {
    pub const fn new() -> Self {
        Slab {
            slots: Vec::new(),
            free: Vec::new(),
            _kind: PhantomData,
        }
    }

    pub fn insert(&mut self, value: T) -> Id<K> {
        if let Some(index) = self.free.pop() {
            let slot = &mut self.slots[index as usize];
            slot.value = Some(value);
            return Id {
                index,
                generation: slot.generation,
                _kind: PhantomData,
            };
        }
        let index = self.slots.len() as u32;
        self.slots.push(Slot {
            generation: 0,
            value: Some(value),
        });
        Id {
            index,
            generation: 0,
            _kind: PhantomData,
        }
    }

    pub fn get(&self, id: Id<K>) -> Option<&T> {
        let slot = self.slots.get(id.index as usize)?;
        if slot.generation != id.generation {
            return None;
        }
        slot.value.as_ref()
    }

    pub fn get_mut(&mut self, id: Id<K>) -> Option<&mut T> {
        let slot = self.slots.get_mut(id.index as usize)?;
        if slot.generation != id.generation {
            return None;
        }
        slot.value.as_mut()
    }

    pub fn remove(&mut self, id: Id<K>) -> Option<T> {
        let slot = self.slots.get_mut(id.index as usize)?;
        if slot.generation != id.generation {
            return None;
        }
        let value = slot.value.take()?;
        slot.generation = slot.generation.wrapping_add(1);
        self.free.push(id.index);
        Some(value)
    }

    pub fn for_each(&self, mut f: impl FnMut(Id<K>, &T)) {
        for (index, slot) in self.slots.iter().enumerate() {
            if let Some(value) = &slot.value {
                let id = Id {
                    index: index as u32,
                    generation: slot.generation,
                    _kind: PhantomData,
                };
                f(id, value);
            }
        }
    }
}
