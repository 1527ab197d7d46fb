//! A serde `Deserializer` over a located [`Node`] tree, so any serde type (the Istio objects of
//! `ambient_proxy::istio`) decodes with errors that carry the `line:column` and key path of the
//! value at fault, in the same words as the rest of the loader:
//! `unknown key `principal`; allowed keys are principals, notPrincipals, …`.
//!
//! Plain scalars can be read as strings (`ports: [8080]` reads as `"8080"`), as a person pasting
//! YAML expects; duplicate keys are errors.

use std::fmt;

use serde::de::{self, DeserializeSeed, IntoDeserializer, Visitor};

use super::{Node, Value};
use crate::diag::{KeyPath, Pos};

/// A decoding error, placed at the innermost node it concerns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeError {
    pub pos: Option<Pos>,
    pub path: Option<KeyPath>,
    pub message: String,
}

impl DeError {
    fn new(message: String) -> Self {
        DeError { pos: None, path: None, message }
    }

    /// Fills in the position and path if no inner node claimed the error first.
    fn at(mut self, pos: Pos, path: &KeyPath) -> Self {
        if self.pos.is_none() {
            self.pos = Some(pos);
            self.path = Some(path.clone());
        }
        self
    }
}

impl fmt::Display for DeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for DeError {}

/// serde's names for what it expected, in this crate's words.
fn expected(exp: &dyn de::Expected) -> String {
    let s = exp.to_string();
    match s.as_str() {
        "a sequence" => "a list".to_string(),
        "a map" => "a mapping".to_string(),
        _ => match s.strip_prefix("struct ") {
            Some(name) => format!("a mapping ({name})"),
            None => s,
        },
    }
}

fn found(unexp: &de::Unexpected<'_>) -> String {
    use de::Unexpected as U;
    match unexp {
        U::Unit | U::Option => "null".to_string(),
        U::Map => "a mapping".to_string(),
        U::Seq => "a list".to_string(),
        U::Str(s) => format!("the string {s:?}"),
        U::Bool(b) => format!("the boolean {b}"),
        U::Unsigned(n) => format!("the integer {n}"),
        U::Signed(n) => format!("the integer {n}"),
        U::Float(n) => format!("the number {n}"),
        other => other.to_string(),
    }
}

impl de::Error for DeError {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        DeError::new(msg.to_string())
    }

    fn invalid_type(unexp: de::Unexpected<'_>, exp: &dyn de::Expected) -> Self {
        DeError::new(format!("expected {}, found {}", expected(exp), found(&unexp)))
    }

    fn invalid_value(unexp: de::Unexpected<'_>, exp: &dyn de::Expected) -> Self {
        DeError::new(format!("invalid value {}; expected {}", found(&unexp), expected(exp)))
    }

    fn invalid_length(len: usize, exp: &dyn de::Expected) -> Self {
        DeError::new(format!("expected {}, found {len} items", expected(exp)))
    }

    fn unknown_variant(variant: &str, expected: &'static [&'static str]) -> Self {
        DeError::new(format!(
            "unknown value `{variant}`; expected one of {}",
            crate::diag::list(expected)
        ))
    }

    fn unknown_field(field: &str, expected: &'static [&'static str]) -> Self {
        DeError::new(format!(
            "unknown key `{field}`; allowed keys are {}",
            crate::diag::list(expected)
        ))
    }

    fn missing_field(field: &'static str) -> Self {
        DeError::new(format!("missing key `{field}`"))
    }

    fn duplicate_field(field: &'static str) -> Self {
        DeError::new(format!("duplicate key `{field}`"))
    }
}

/// Decodes `node` (found at `path`) into `T`.
pub fn from_node<'a, T: de::Deserialize<'a>>(node: &'a Node, path: &KeyPath) -> Result<T, DeError> {
    T::deserialize(NodeDe { node, path: path.clone() })
}

/// The deserializer for one node.
#[derive(Debug)]
pub struct NodeDe<'a> {
    node: &'a Node,
    path: KeyPath,
}

impl<'a> NodeDe<'a> {
    pub fn new(node: &'a Node, path: KeyPath) -> Self {
        NodeDe { node, path }
    }

    fn any<V: Visitor<'a>>(self, visitor: V) -> Result<V::Value, DeError> {
        let node = self.node;
        match &node.value {
            Value::Null => visitor.visit_unit(),
            Value::Bool(b) => visitor.visit_bool(*b),
            Value::Int(i) => {
                if let Ok(u) = u64::try_from(*i) {
                    visitor.visit_u64(u)
                } else if let Ok(s) = i64::try_from(*i) {
                    visitor.visit_i64(s)
                } else {
                    visitor.visit_i128(*i)
                }
            }
            Value::Float(f) => visitor.visit_f64(*f),
            Value::Str(s) => visitor.visit_borrowed_str(s),
            Value::Seq(items) => {
                let mut access = SeqAccess { items: items.iter(), index: 0, path: &self.path };
                let value = visitor.visit_seq(&mut access)?;
                match access.items.len() {
                    0 => Ok(value),
                    n => Err(DeError::new(format!("{n} items too many in this list"))),
                }
            }
            Value::Map(entries) => {
                visitor.visit_map(MapAccess { entries, index: 0, path: &self.path, value: None })
            }
        }
    }
}

macro_rules! via_any {
    ($($name:ident)*) => {
        $(fn $name<V: Visitor<'a>>(self, visitor: V) -> Result<V::Value, DeError> {
            let (pos, path) = (self.node.pos, self.path.clone());
            self.any(visitor).map_err(|e| e.at(pos, &path))
        })*
    };
}

impl<'a> de::Deserializer<'a> for NodeDe<'a> {
    type Error = DeError;

    via_any! {
        deserialize_any deserialize_bool deserialize_i8 deserialize_i16 deserialize_i32
        deserialize_i64 deserialize_i128 deserialize_u8 deserialize_u16 deserialize_u32
        deserialize_u64 deserialize_u128 deserialize_f32 deserialize_f64 deserialize_char
        deserialize_bytes deserialize_byte_buf deserialize_unit deserialize_seq deserialize_map
    }

    fn deserialize_str<V: Visitor<'a>>(self, visitor: V) -> Result<V::Value, DeError> {
        let (pos, path) = (self.node.pos, self.path.clone());
        let result = match (&self.node.value, self.node.as_text()) {
            (Value::Str(s), _) => visitor.visit_borrowed_str(s),
            (_, Some(text)) => visitor.visit_str(text),
            _ => self.any(visitor),
        };
        result.map_err(|e| e.at(pos, &path))
    }

    fn deserialize_string<V: Visitor<'a>>(self, visitor: V) -> Result<V::Value, DeError> {
        self.deserialize_str(visitor)
    }

    fn deserialize_identifier<V: Visitor<'a>>(self, visitor: V) -> Result<V::Value, DeError> {
        self.deserialize_str(visitor)
    }

    fn deserialize_option<V: Visitor<'a>>(self, visitor: V) -> Result<V::Value, DeError> {
        let (pos, path) = (self.node.pos, self.path.clone());
        let result =
            if self.node.is_null() { visitor.visit_none() } else { visitor.visit_some(self) };
        result.map_err(|e| e.at(pos, &path))
    }

    fn deserialize_unit_struct<V: Visitor<'a>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, DeError> {
        self.deserialize_unit(visitor)
    }

    fn deserialize_newtype_struct<V: Visitor<'a>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, DeError> {
        let (pos, path) = (self.node.pos, self.path.clone());
        visitor.visit_newtype_struct(self).map_err(|e| e.at(pos, &path))
    }

    fn deserialize_tuple<V: Visitor<'a>>(self, _len: usize, v: V) -> Result<V::Value, DeError> {
        self.deserialize_seq(v)
    }

    fn deserialize_tuple_struct<V: Visitor<'a>>(
        self,
        _name: &'static str,
        _len: usize,
        visitor: V,
    ) -> Result<V::Value, DeError> {
        self.deserialize_seq(visitor)
    }

    fn deserialize_struct<V: Visitor<'a>>(
        self,
        _name: &'static str,
        _fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, DeError> {
        self.deserialize_map(visitor)
    }

    fn deserialize_enum<V: Visitor<'a>>(
        self,
        _name: &'static str,
        _variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, DeError> {
        let (pos, path) = (self.node.pos, self.path.clone());
        let result = match &self.node.value {
            Value::Map(entries) if entries.len() == 1 => {
                let (k, v) = &entries[0];
                let path = match k.as_text() {
                    Some(t) => self.path.key(t),
                    None => self.path.clone(),
                };
                visitor.visit_enum(EnumAccess { tag: k, content: Some(v), path })
            }
            Value::Map(_) => {
                Err(DeError::new("expected a single-key mapping naming one variant".to_string()))
            }
            _ => visitor.visit_enum(EnumAccess { tag: self.node, content: None, path: self.path }),
        };
        result.map_err(|e| e.at(pos, &path))
    }

    fn deserialize_ignored_any<V: Visitor<'a>>(self, visitor: V) -> Result<V::Value, DeError> {
        visitor.visit_unit()
    }
}

struct SeqAccess<'a, 'p> {
    items: std::slice::Iter<'a, Node>,
    index: usize,
    path: &'p KeyPath,
}

impl<'a> de::SeqAccess<'a> for &mut SeqAccess<'a, '_> {
    type Error = DeError;

    fn next_element_seed<T: DeserializeSeed<'a>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, DeError> {
        let Some(node) = self.items.next() else { return Ok(None) };
        let path = self.path.index(self.index);
        self.index += 1;
        seed.deserialize(NodeDe { node, path }).map(Some)
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.items.len())
    }
}

struct MapAccess<'a, 'p> {
    entries: &'a [(Node, Node)],
    index: usize,
    path: &'p KeyPath,
    value: Option<(&'a Node, KeyPath)>,
}

impl<'a> de::MapAccess<'a> for MapAccess<'a, '_> {
    type Error = DeError;

    fn next_key_seed<K: DeserializeSeed<'a>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, DeError> {
        let Some((key, value)) = self.entries.get(self.index) else { return Ok(None) };
        let earlier = &self.entries[..self.index];
        self.index += 1;
        let text = key.as_text().unwrap_or("");
        let path = self.path.key(text);
        if let Some((first, _)) = earlier.iter().find(|(k, _)| k.as_text() == key.as_text()) {
            return Err(DeError::new(format!(
                "duplicate key `{text}` (first written at {})",
                first.pos
            ))
            .at(key.pos, &path));
        }
        self.value = Some((value, path.clone()));
        seed.deserialize(NodeDe { node: key, path }).map(Some)
    }

    fn next_value_seed<V: DeserializeSeed<'a>>(&mut self, seed: V) -> Result<V::Value, DeError> {
        match self.value.take() {
            Some((node, path)) => seed.deserialize(NodeDe { node, path }),
            None => Err(DeError::new("value requested before its key".to_string())),
        }
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.entries.len() - self.index)
    }
}

struct EnumAccess<'a> {
    tag: &'a Node,
    content: Option<&'a Node>,
    path: KeyPath,
}

impl<'a> de::EnumAccess<'a> for EnumAccess<'a> {
    type Error = DeError;
    type Variant = VariantAccess<'a>;

    fn variant_seed<V: DeserializeSeed<'a>>(
        self,
        seed: V,
    ) -> Result<(V::Value, Self::Variant), DeError> {
        let variant = seed.deserialize(NodeDe { node: self.tag, path: self.path.clone() })?;
        Ok((variant, VariantAccess { content: self.content, path: self.path }))
    }
}

struct VariantAccess<'a> {
    content: Option<&'a Node>,
    path: KeyPath,
}

impl<'a> VariantAccess<'a> {
    fn content(&self) -> Result<&'a Node, DeError> {
        self.content.ok_or_else(|| DeError::new("this variant takes a value".to_string()))
    }
}

impl<'a> de::VariantAccess<'a> for VariantAccess<'a> {
    type Error = DeError;

    fn unit_variant(self) -> Result<(), DeError> {
        match self.content {
            None => Ok(()),
            Some(n) if n.is_null() => Ok(()),
            Some(n) => {
                Err(DeError::new("this variant takes no value".to_string()).at(n.pos, &self.path))
            }
        }
    }

    fn newtype_variant_seed<T: DeserializeSeed<'a>>(self, seed: T) -> Result<T::Value, DeError> {
        let node = self.content()?;
        seed.deserialize(NodeDe { node, path: self.path })
    }

    fn tuple_variant<V: Visitor<'a>>(self, _len: usize, visitor: V) -> Result<V::Value, DeError> {
        let node = self.content()?;
        de::Deserializer::deserialize_seq(NodeDe { node, path: self.path }, visitor)
    }

    fn struct_variant<V: Visitor<'a>>(
        self,
        _fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, DeError> {
        let node = self.content()?;
        de::Deserializer::deserialize_map(NodeDe { node, path: self.path }, visitor)
    }
}

impl<'a> IntoDeserializer<'a, DeError> for NodeDe<'a> {
    type Deserializer = Self;

    fn into_deserializer(self) -> Self {
        self
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use ambient_proxy::istio::{AuthorizationPolicy, PeerAuthentication, PortKey};

    use super::*;
    use crate::yaml::parse;

    fn decode<T: de::DeserializeOwned>(text: &str) -> Result<T, DeError> {
        let node = parse(text).unwrap();
        from_node(&node, &KeyPath::root().key("policies").index(0))
    }

    #[test]
    fn a_policy_decodes_with_numbers_read_as_strings() {
        let p: AuthorizationPolicy = decode(
            "apiVersion: security.istio.io/v1\nmetadata: {name: a}\nspec:\n  rules:\n  - to: [{operation: {ports: [8080, \"9090\"]}}]\n",
        )
        .unwrap();
        assert_eq!(p.spec.rules[0].to[0].operation.ports, ["8080", "9090"]);
    }

    #[test]
    fn an_unknown_key_names_its_path_position_and_the_allowed_keys() {
        let err = decode::<AuthorizationPolicy>(
            "apiVersion: v\nmetadata: {name: a}\nspec:\n  rules:\n  - from:\n    - source:\n        principal: [x]\n",
        )
        .unwrap_err();
        assert_eq!(err.pos, Some(Pos::new(7, 9)));
        assert_eq!(
            err.path.unwrap().as_str(),
            "policies[0].spec.rules[0].from[0].source.principal"
        );
        assert!(
            err.message.starts_with(
                "unknown key `principal`; allowed keys are principals, notPrincipals,"
            ),
            "{}",
            err.message
        );
    }

    #[test]
    fn type_errors_and_bad_variants_point_at_the_value() {
        let err = decode::<AuthorizationPolicy>(
            "apiVersion: v\nmetadata: {name: a}\nspec: {action: AUDITX}\n",
        )
        .unwrap_err();
        assert_eq!(err.pos, Some(Pos::new(3, 16)));
        assert_eq!(
            err.message,
            "unknown value `AUDITX`; expected one of ALLOW, DENY, AUDIT, CUSTOM"
        );
        let err = decode::<AuthorizationPolicy>(
            "apiVersion: v\nmetadata: {name: a}\nspec: {rules: {}}\n",
        )
        .unwrap_err();
        assert_eq!(err.path.unwrap().as_str(), "policies[0].spec.rules");
        assert_eq!(err.message, "expected a list, found a mapping");
    }

    #[test]
    fn missing_keys_point_at_the_mapping() {
        let err = decode::<AuthorizationPolicy>("apiVersion: v\nmetadata:\n  namespace: x\n")
            .unwrap_err();
        assert_eq!(err.pos, Some(Pos::new(3, 3)));
        assert_eq!(err.path.unwrap().as_str(), "policies[0].metadata");
        assert_eq!(err.message, "missing key `name`");
    }

    #[test]
    fn duplicate_keys_are_errors_even_in_free_form_maps() {
        let err = decode::<BTreeMap<String, String>>("a: 1\nb: 2\na: 3\n").unwrap_err();
        assert_eq!(err.pos, Some(Pos::new(3, 1)));
        assert_eq!(err.message, "duplicate key `a` (first written at 1:1)");
    }

    #[test]
    fn integer_map_keys_and_anchors_work() {
        let p: PeerAuthentication = decode(
            "apiVersion: v\nmetadata: {name: a}\nspec:\n  selector: {matchLabels: {app: x}}\n  mtls: &m {mode: STRICT}\n  portLevelMtls: {8080: *m}\n",
        )
        .unwrap();
        assert!(p.spec.port_level_mtls.contains_key(&PortKey(8080)));
    }
}
