//! The one way pleg names the values of its enums: a variant and the text
//! that stands for it in logs, JSON, metrics labels and flags, written once
//! side by side.

/// Declares an enum whose variants each have a fixed name, and gives it
/// `ALL` (every variant, in declaration order), `as_str`, `from_name`,
/// `Display` and a metrics label encoding.
macro_rules! named_enum {
    (
        $(#[$meta:meta])*
        $vis:vis enum $name:ident {
            $(
                $(#[$variant_meta:meta])*
                $variant:ident = $text:literal
            ),+ $(,)?
        }
    ) => {
        $(#[$meta])*
        $vis enum $name {
            $(
                $(#[$variant_meta])*
                $variant,
            )+
        }

        impl $name {
            /// Every value, in declaration order.
            // (Some enums need only their names.)
            #[allow(dead_code)]
            $vis const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The value's name.
            $vis const fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text,)+
                }
            }

            /// The value with this name, ignoring ASCII case.
            #[allow(dead_code)]
            $vis fn from_name(name: &str) -> Option<Self> {
                Self::ALL
                    .iter()
                    .copied()
                    .find(|value| value.as_str().eq_ignore_ascii_case(name))
            }
        }

        impl ::std::fmt::Display for $name {
            fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl ::prometheus_client::encoding::EncodeLabelValue for $name {
            fn encode(
                &self,
                encoder: &mut ::prometheus_client::encoding::LabelValueEncoder<'_>,
            ) -> ::std::result::Result<(), ::std::fmt::Error> {
                ::std::fmt::Write::write_str(encoder, self.as_str())
            }
        }
    };
}

pub(crate) use named_enum;

#[cfg(test)]
mod tests {
    named_enum! {
        /// A test enum.
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        enum Colour {
            /// Red.
            Red = "red",
            /// Dark blue.
            DarkBlue = "dark_blue",
        }
    }

    #[test]
    fn names_round_trip_and_list_every_value() {
        assert_eq!(Colour::ALL, &[Colour::Red, Colour::DarkBlue]);
        for colour in Colour::ALL {
            assert_eq!(Colour::from_name(colour.as_str()), Some(*colour));
        }
        assert_eq!(Colour::from_name("DARK_BLUE"), Some(Colour::DarkBlue));
        assert_eq!(Colour::from_name("green"), None);
        assert_eq!(Colour::DarkBlue.to_string(), "dark_blue");
    }
}
