//! The per-handler outcomes of one event, without an allocation in the common case.

use crate::commit::HandlerOutcome;
use std::fmt;
use std::ops::Range;

/// What happened to one event for each handler that saw it, by handler index (the
/// handler's position in the registry), in index order.
///
/// Iterating gives `(index, &outcome)` pairs. When every handler had the same outcome, as
/// for a re-delivery every handler had already applied, it is kept without allocating,
/// whatever the number of handlers.
///
/// ```
/// use driftless_storage::{HandlerOutcome, HandlerOutcomes};
///
/// let mixed = HandlerOutcomes::from(vec![(0, HandlerOutcome::Applied), (1, HandlerOutcome::NotHandled)]);
/// assert_eq!(mixed.get(1), Some(&HandlerOutcome::NotHandled));
/// let same = HandlerOutcomes::same(0..2, HandlerOutcome::Duplicate);
/// assert_eq!(same.iter().collect::<Vec<_>>(), [(0, &HandlerOutcome::Duplicate), (1, &HandlerOutcome::Duplicate)]);
/// assert_eq!(same, HandlerOutcomes::from(vec![(0, HandlerOutcome::Duplicate), (1, HandlerOutcome::Duplicate)]));
/// ```
#[derive(Clone, Default)]
pub struct HandlerOutcomes(Repr);

#[derive(Clone)]
enum Repr {
    Each(Vec<(usize, HandlerOutcome)>),
    Same { handlers: Range<usize>, outcome: HandlerOutcome },
}

impl Default for Repr {
    fn default() -> Self {
        Repr::Each(Vec::new())
    }
}

impl HandlerOutcomes {
    /// The same `outcome` for every handler of `handlers`.
    #[must_use]
    pub fn same(handlers: Range<usize>, outcome: HandlerOutcome) -> Self {
        Self(Repr::Same { handlers, outcome })
    }

    /// The same `outcome` for every handler of `handlers` (indices in increasing order):
    /// without allocating when they are a run of consecutive indices, as every handler's are.
    #[must_use]
    pub fn same_for(handlers: &[usize], outcome: HandlerOutcome) -> Self {
        match (handlers.first(), handlers.last()) {
            (Some(&first), Some(&last)) if last.checked_sub(first) == Some(handlers.len() - 1) => {
                Self::same(first..last + 1, outcome)
            }
            _ => handlers.iter().map(|&i| (i, outcome.clone())).collect(),
        }
    }

    /// The `(handler index, outcome)` pairs, in index order.
    #[must_use]
    pub fn iter(&self) -> HandlerOutcomesIter<'_> {
        HandlerOutcomesIter(match &self.0 {
            Repr::Each(v) => IterRepr::Each(v.iter()),
            Repr::Same { handlers, outcome } => IterRepr::Same { handlers: handlers.clone(), outcome },
        })
    }

    /// The outcome of the handler with index `handler`, if it saw the event.
    #[must_use]
    pub fn get(&self, handler: usize) -> Option<&HandlerOutcome> {
        self.iter().find(|(i, _)| *i == handler).map(|(_, o)| o)
    }

    /// How many handlers saw the event.
    #[must_use]
    pub fn len(&self) -> usize {
        match &self.0 {
            Repr::Each(v) => v.len(),
            Repr::Same { handlers, .. } => handlers.len(),
        }
    }

    /// Whether no handler saw the event (a conflict is reported before any handler).
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl From<Vec<(usize, HandlerOutcome)>> for HandlerOutcomes {
    fn from(outcomes: Vec<(usize, HandlerOutcome)>) -> Self {
        Self(Repr::Each(outcomes))
    }
}

impl FromIterator<(usize, HandlerOutcome)> for HandlerOutcomes {
    fn from_iter<I: IntoIterator<Item = (usize, HandlerOutcome)>>(iter: I) -> Self {
        Self(Repr::Each(iter.into_iter().collect()))
    }
}

impl PartialEq for HandlerOutcomes {
    fn eq(&self, other: &Self) -> bool {
        self.iter().eq(other.iter())
    }
}

impl Eq for HandlerOutcomes {}

impl fmt::Debug for HandlerOutcomes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

impl<'a> IntoIterator for &'a HandlerOutcomes {
    type Item = (usize, &'a HandlerOutcome);
    type IntoIter = HandlerOutcomesIter<'a>;

    fn into_iter(self) -> HandlerOutcomesIter<'a> {
        self.iter()
    }
}

/// The iterator of [`HandlerOutcomes::iter`].
#[derive(Debug, Clone)]
pub struct HandlerOutcomesIter<'a>(IterRepr<'a>);

#[derive(Debug, Clone)]
enum IterRepr<'a> {
    Each(std::slice::Iter<'a, (usize, HandlerOutcome)>),
    Same { handlers: Range<usize>, outcome: &'a HandlerOutcome },
}

impl<'a> Iterator for HandlerOutcomesIter<'a> {
    type Item = (usize, &'a HandlerOutcome);

    fn next(&mut self) -> Option<Self::Item> {
        match &mut self.0 {
            IterRepr::Each(it) => it.next().map(|(i, o)| (*i, o)),
            IterRepr::Same { handlers, outcome } => handlers.next().map(|i| (i, *outcome)),
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        match &self.0 {
            IterRepr::Each(it) => it.size_hint(),
            IterRepr::Same { handlers, .. } => handlers.size_hint(),
        }
    }
}

impl ExactSizeIterator for HandlerOutcomesIter<'_> {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_forms_of_the_same_outcomes_are_equal_and_read_alike() {
        let each =
            HandlerOutcomes::from(vec![(2, HandlerOutcome::Duplicate), (3, HandlerOutcome::Duplicate)]);
        let same = HandlerOutcomes::same(2..4, HandlerOutcome::Duplicate);
        assert_eq!(each, same);
        assert_eq!(format!("{each:?}"), format!("{same:?}"));
        assert_eq!((same.len(), same.is_empty()), (2, false));
        assert_eq!(same.iter().len(), 2);
        assert_eq!(same.get(3), Some(&HandlerOutcome::Duplicate));
        assert_eq!(same.get(1), None);
        assert_ne!(same, HandlerOutcomes::same(2..4, HandlerOutcome::Applied));
        assert_ne!(same, HandlerOutcomes::same(2..3, HandlerOutcome::Duplicate));
        let none = HandlerOutcomes::default();
        assert!(none.is_empty());
        assert_eq!(none, HandlerOutcomes::same(0..0, HandlerOutcome::Applied));
        assert_eq!(HandlerOutcomes::same_for(&[2, 3], HandlerOutcome::Duplicate), each);
        let gapped = HandlerOutcomes::same_for(&[1, 3], HandlerOutcome::Applied);
        assert_eq!(
            gapped.iter().collect::<Vec<_>>(),
            [(1, &HandlerOutcome::Applied), (3, &HandlerOutcome::Applied)]
        );
        assert!(HandlerOutcomes::same_for(&[], HandlerOutcome::Applied).is_empty());
        let pairs: Vec<(usize, &HandlerOutcome)> = (&each).into_iter().collect();
        assert_eq!(pairs, [(2, &HandlerOutcome::Duplicate), (3, &HandlerOutcome::Duplicate)]);
    }
}
