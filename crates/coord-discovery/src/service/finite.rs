//! Finds NaN and infinite floats in a value about to be written as JSON. JSON has neither, and
//! serde_json writes them as `null` without an error, so metadata holding one would be stored as
//! an entry that no reader of the metadata type can decode.

use std::fmt;

use serde::Serialize;
use serde::ser;

/// Whether serializing `value` meets a NaN or infinite `f32`/`f64` anywhere (map keys included).
/// A value whose `Serialize` fails for another reason counts as finite: the encoder reports
/// that failure itself.
pub(crate) fn has_non_finite_float<T: Serialize + ?Sized>(value: &T) -> bool {
    matches!(value.serialize(Walk), Err(Stop::NonFinite))
}

/// A serializer that writes nothing and stops at the first non-finite float.
struct Walk;

#[derive(Debug)]
enum Stop {
    NonFinite,
    Other,
}

impl fmt::Display for Stop {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Stop::NonFinite => f.write_str("a NaN or infinite float"),
            Stop::Other => f.write_str("the value failed to serialize"),
        }
    }
}

impl std::error::Error for Stop {}

impl ser::Error for Stop {
    fn custom<T: fmt::Display>(_: T) -> Stop {
        Stop::Other
    }
}

fn float(finite: bool) -> Result<(), Stop> {
    if finite { Ok(()) } else { Err(Stop::NonFinite) }
}

macro_rules! ignore {
    ($($method:ident: $ty:ty),* $(,)?) => {
        $(fn $method(self, _: $ty) -> Result<(), Stop> { Ok(()) })*
    };
}

impl ser::Serializer for Walk {
    type Ok = ();
    type Error = Stop;
    type SerializeSeq = Walk;
    type SerializeTuple = Walk;
    type SerializeTupleStruct = Walk;
    type SerializeTupleVariant = Walk;
    type SerializeMap = Walk;
    type SerializeStruct = Walk;
    type SerializeStructVariant = Walk;

    ignore! {
        serialize_bool: bool, serialize_i8: i8, serialize_i16: i16, serialize_i32: i32,
        serialize_i64: i64, serialize_i128: i128, serialize_u8: u8, serialize_u16: u16,
        serialize_u32: u32, serialize_u64: u64, serialize_u128: u128, serialize_char: char,
        serialize_str: &str, serialize_bytes: &[u8], serialize_unit_struct: &'static str,
    }

    fn serialize_f32(self, v: f32) -> Result<(), Stop> {
        float(v.is_finite())
    }

    fn serialize_f64(self, v: f64) -> Result<(), Stop> {
        float(v.is_finite())
    }

    fn serialize_none(self) -> Result<(), Stop> {
        Ok(())
    }

    fn serialize_some<T: Serialize + ?Sized>(self, value: &T) -> Result<(), Stop> {
        value.serialize(Walk)
    }

    fn serialize_unit(self) -> Result<(), Stop> {
        Ok(())
    }

    fn serialize_unit_variant(self, _: &'static str, _: u32, _: &'static str) -> Result<(), Stop> {
        Ok(())
    }

    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        value: &T,
    ) -> Result<(), Stop> {
        value.serialize(Walk)
    }

    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        value: &T,
    ) -> Result<(), Stop> {
        value.serialize(Walk)
    }

    fn serialize_seq(self, _: Option<usize>) -> Result<Walk, Stop> {
        Ok(Walk)
    }

    fn serialize_tuple(self, _: usize) -> Result<Walk, Stop> {
        Ok(Walk)
    }

    fn serialize_tuple_struct(self, _: &'static str, _: usize) -> Result<Walk, Stop> {
        Ok(Walk)
    }

    fn serialize_tuple_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> Result<Walk, Stop> {
        Ok(Walk)
    }

    fn serialize_map(self, _: Option<usize>) -> Result<Walk, Stop> {
        Ok(Walk)
    }

    fn serialize_struct(self, _: &'static str, _: usize) -> Result<Walk, Stop> {
        Ok(Walk)
    }

    fn serialize_struct_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> Result<Walk, Stop> {
        Ok(Walk)
    }
}

macro_rules! elements {
    ($($trait:ident :: $method:ident),* $(,)?) => {
        $(impl ser::$trait for Walk {
            type Ok = ();
            type Error = Stop;

            fn $method<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Stop> {
                value.serialize(Walk)
            }

            fn end(self) -> Result<(), Stop> {
                Ok(())
            }
        })*
    };
}

elements! {
    SerializeSeq::serialize_element,
    SerializeTuple::serialize_element,
    SerializeTupleStruct::serialize_field,
    SerializeTupleVariant::serialize_field,
}

impl ser::SerializeMap for Walk {
    type Ok = ();
    type Error = Stop;

    fn serialize_key<T: Serialize + ?Sized>(&mut self, key: &T) -> Result<(), Stop> {
        key.serialize(Walk)
    }

    fn serialize_value<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Stop> {
        value.serialize(Walk)
    }

    fn end(self) -> Result<(), Stop> {
        Ok(())
    }
}

macro_rules! fields {
    ($($trait:ident),* $(,)?) => {
        $(impl ser::$trait for Walk {
            type Ok = ();
            type Error = Stop;

            fn serialize_field<T: Serialize + ?Sized>(
                &mut self,
                _: &'static str,
                value: &T,
            ) -> Result<(), Stop> {
                value.serialize(Walk)
            }

            fn end(self) -> Result<(), Stop> {
                Ok(())
            }
        })*
    };
}

fields!(SerializeStruct, SerializeStructVariant);

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[derive(Serialize)]
    struct Inner {
        ratio: f64,
    }

    #[derive(Serialize)]
    enum Shape {
        Unit,
        Tuple(u8, f32),
        Struct { inner: Inner },
    }

    #[derive(Serialize)]
    struct Meta {
        name: String,
        weights: Vec<f64>,
        nested: Option<Inner>,
        by_zone: BTreeMap<String, (u32, f64)>,
        shape: Shape,
    }

    fn meta() -> Meta {
        Meta {
            name: "a".into(),
            weights: vec![1.0, 2.5],
            nested: Some(Inner { ratio: 0.5 }),
            by_zone: BTreeMap::from([("z1".to_owned(), (1, 0.25))]),
            shape: Shape::Struct {
                inner: Inner { ratio: 1.0 },
            },
        }
    }

    #[test]
    fn finite_values_pass() {
        assert!(!has_non_finite_float(&meta()));
        assert!(!has_non_finite_float(&()));
        assert!(!has_non_finite_float(&Shape::Unit));
        assert!(!has_non_finite_float(
            &serde_json::json!({"x": [1.5, null]})
        ));
    }

    #[test]
    fn a_non_finite_float_anywhere_is_found() {
        for bad in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
            let mut m = meta();
            m.weights.push(bad);
            assert!(has_non_finite_float(&m), "in a vector: {bad}");
            let mut m = meta();
            m.nested = Some(Inner { ratio: bad });
            assert!(has_non_finite_float(&m), "in an option: {bad}");
            let mut m = meta();
            m.by_zone.insert("z2".into(), (2, bad));
            assert!(has_non_finite_float(&m), "in a map value: {bad}");
            let mut m = meta();
            m.shape = Shape::Struct {
                inner: Inner { ratio: bad },
            };
            assert!(has_non_finite_float(&m), "in a struct variant: {bad}");
            assert!(has_non_finite_float(&bad), "bare: {bad}");
        }
        assert!(has_non_finite_float(&Shape::Tuple(1, f32::NAN)));
    }
}
