//! Typed JSON bodies that must be objects. serde's derived structs also accept an array of their
//! fields in declaration order (`["boulder", "gym-1"]` for `{"discipline", "scope"}`), which
//! no client means and the OpenAPI document does not allow: [`Body`] refuses anything but an
//! object with a 400, and otherwise reads the body exactly as `web::Json` does (same limit,
//! content type, error answers, duplicate-field refusal).

use std::fmt;
use std::future::Future;
use std::marker::PhantomData;
use std::ops::Deref;
use std::pin::Pin;

use actix_web::dev::Payload;
use actix_web::{FromRequest, HttpRequest, web};
use serde::de::value::MapAccessDeserializer;
use serde::de::{DeserializeOwned, MapAccess, Visitor};
use serde::{Deserialize, Deserializer};

/// `T` read from a JSON object body.
#[derive(Debug)]
pub struct Body<T>(pub T);

impl<T> Body<T> {
    pub fn into_inner(self) -> T {
        self.0
    }
}

impl<T> Deref for Body<T> {
    type Target = T;

    fn deref(&self) -> &T {
        &self.0
    }
}

impl<T: DeserializeOwned + 'static> FromRequest for Body<T> {
    type Error = actix_web::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self, Self::Error>>>>;

    fn from_request(req: &HttpRequest, payload: &mut Payload) -> Self::Future {
        let json = web::Json::<Object<T>>::from_request(req, payload);
        Box::pin(async move { Ok(Body(json.await?.into_inner().0)) })
    }
}

/// `T`, deserialized only from a map.
pub struct Object<T>(pub T);

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Object<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct OnlyAMap<T>(PhantomData<T>);

        impl<'de, T: Deserialize<'de>> Visitor<'de> for OnlyAMap<T> {
            type Value = T;

            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON object")
            }

            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<T, A::Error> {
                T::deserialize(MapAccessDeserializer::new(map))
            }
        }

        deserializer
            .deserialize_map(OnlyAMap(PhantomData))
            .map(Object)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Join {
        discipline: String,
        #[serde(default)]
        scope: Option<String>,
    }

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(tag = "platform", rename_all = "snake_case", deny_unknown_fields)]
    enum Device {
        Fcm { token: String },
    }

    fn read<T: DeserializeOwned>(json: &str) -> Result<T, String> {
        serde_json::from_str::<Object<T>>(json)
            .map(|o| o.0)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn an_object_reads_as_the_type_says_and_nothing_else_does() {
        assert_eq!(
            read::<Join>(r#"{"discipline":"boulder"}"#),
            Ok(Join {
                discipline: "boulder".into(),
                scope: None
            })
        );
        assert_eq!(
            read::<Device>(r#"{"platform":"fcm","token":"t"}"#),
            Ok(Device::Fcm { token: "t".into() })
        );
        // serde alone takes the array; the body does not.
        assert!(serde_json::from_str::<Join>(r#"["boulder","gym-1"]"#).is_ok());
        for not_an_object in [r#"["boulder","gym-1"]"#, "[]", r#""boulder""#, "1", "null"] {
            let error = read::<Join>(not_an_object).unwrap_err();
            assert!(
                error.contains("expected a JSON object"),
                "{not_an_object}: {error}"
            );
        }
        // What the type refuses is still refused, with its own words.
        let twice = read::<Join>(r#"{"discipline":"lead","discipline":"speed"}"#).unwrap_err();
        assert!(twice.starts_with("duplicate field `discipline`"), "{twice}");
        let unknown = read::<Join>(r#"{"discipline":"lead","x":1}"#).unwrap_err();
        assert!(unknown.starts_with("unknown field `x`"), "{unknown}");
    }
}
