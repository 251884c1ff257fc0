//! Typed identities of a generation's pools, routes and listeners: positions in the validated
//! config's lists (and so in `State`'s), which the request path uses instead of names.

macro_rules! id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(u32);

        impl $name {
            pub fn new(index: usize) -> $name {
                $name(u32::try_from(index).expect("fewer than 2^32 config entries"))
            }

            pub fn index(self) -> usize {
                self.0 as usize
            }
        }
    };
}

id!(
    /// A `[[pool]]`, by its position in the config.
    PoolId
);
id!(
    /// A `[[route]]`, by its position in the config.
    RouteId
);
id!(
    /// A `[[listener]]`, by its position in the config.
    ListenerId
);
