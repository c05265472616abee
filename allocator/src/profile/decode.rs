//! A minimal pprof protobuf decoder for tests: enough of profile.proto to check what [`super::pprof`]
//! writes (written from the format's description, independently of the encoder).

use std::collections::BTreeMap;
use std::string::String;
use std::vec::Vec;

/// One decoded sample.
#[derive(Debug, Default, Clone)]
pub struct Sample {
    pub locations: Vec<u64>,
    pub values: Vec<i64>,
    /// The numeric label `bytes`, if present.
    pub bytes: Option<i64>,
}

/// The parts of a profile the tests look at.
#[derive(Debug, Default)]
pub struct Profile {
    pub sample_types: Vec<(String, String)>,
    pub samples: Vec<Sample>,
    /// location id -> (mapping id, address)
    pub locations: BTreeMap<u64, (u64, u64)>,
    /// (id, start, limit, offset, file)
    pub mappings: Vec<(u64, u64, u64, u64, String)>,
    pub period_type: (String, String),
    pub period: i64,
    pub drop_frames: String,
}

struct Reader<'a> {
    b: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn done(&self) -> bool {
        self.at >= self.b.len()
    }
    fn varint(&mut self) -> u64 {
        let mut v = 0u64;
        let mut shift = 0;
        loop {
            let byte = self.b[self.at];
            self.at += 1;
            v |= ((byte & 0x7f) as u64) << shift;
            if byte & 0x80 == 0 {
                return v;
            }
            shift += 7;
            assert!(shift < 70, "varint too long");
        }
    }
    fn field(&mut self) -> (u64, Value<'a>) {
        let key = self.varint();
        let v = match key & 7 {
            0 => Value::Int(self.varint()),
            2 => {
                let n = self.varint() as usize;
                let s = &self.b[self.at..self.at + n];
                self.at += n;
                Value::Bytes(s)
            }
            w => panic!("unexpected wire type {w}"),
        };
        (key >> 3, v)
    }
}

enum Value<'a> {
    Int(u64),
    Bytes(&'a [u8]),
}

fn fields(b: &[u8]) -> Vec<(u64, Value<'_>)> {
    let mut r = Reader { b, at: 0 };
    let mut out = Vec::new();
    while !r.done() {
        out.push(r.field());
    }
    out
}

/// Repeated integers: packed or not.
fn ints(v: &Value<'_>, into: &mut Vec<u64>) {
    match v {
        Value::Int(i) => into.push(*i),
        Value::Bytes(b) => {
            let mut r = Reader { b, at: 0 };
            while !r.done() {
                into.push(r.varint());
            }
        }
    }
}

fn int(v: &Value<'_>) -> u64 {
    match v {
        Value::Int(i) => *i,
        Value::Bytes(_) => panic!("expected an integer"),
    }
}

fn bytes<'a>(v: &Value<'a>) -> &'a [u8] {
    match v {
        Value::Bytes(b) => b,
        Value::Int(_) => panic!("expected bytes"),
    }
}

/// Decodes a profile; panics on malformed input.
pub fn decode(b: &[u8]) -> Profile {
    let mut strings = Vec::new();
    let mut raw_types = Vec::new();
    let mut raw_samples = Vec::new();
    let mut p = Profile::default();
    let mut period_type = (0, 0);
    let mut drop = 0;
    let mut raw_maps = Vec::new();
    for (f, v) in fields(b) {
        match f {
            1 => {
                let m = fields(bytes(&v));
                let get = |n| m.iter().find(|(k, _)| *k == n).map_or(0, |(_, v)| int(v));
                raw_types.push((get(1), get(2)));
            }
            2 => {
                let mut s = Sample::default();
                let mut label_key = 0;
                let mut label_num = None;
                for (k, v) in fields(bytes(&v)) {
                    match k {
                        1 => ints(&v, &mut s.locations),
                        2 => {
                            let mut vals = Vec::new();
                            ints(&v, &mut vals);
                            s.values.extend(vals.into_iter().map(|x| x as i64));
                        }
                        3 => {
                            for (lk, lv) in fields(bytes(&v)) {
                                match lk {
                                    1 => label_key = int(&lv),
                                    3 => label_num = Some(int(&lv) as i64),
                                    _ => {}
                                }
                            }
                        }
                        _ => {}
                    }
                }
                raw_samples.push((s, label_key, label_num));
            }
            3 => {
                let m = fields(bytes(&v));
                let get = |n| m.iter().find(|(k, _)| *k == n).map_or(0, |(_, v)| int(v));
                raw_maps.push((get(1), get(2), get(3), get(4), get(5)));
            }
            4 => {
                let m = fields(bytes(&v));
                let get = |n| m.iter().find(|(k, _)| *k == n).map_or(0, |(_, v)| int(v));
                p.locations.insert(get(1), (get(2), get(3)));
            }
            6 => strings.push(String::from_utf8(bytes(&v).to_vec()).expect("utf-8 string")),
            7 => drop = int(&v),
            11 => {
                let m = fields(bytes(&v));
                let get = |n| m.iter().find(|(k, _)| *k == n).map_or(0, |(_, v)| int(v));
                period_type = (get(1), get(2));
            }
            12 => p.period = int(&v) as i64,
            _ => {}
        }
    }
    assert_eq!(
        strings.first().map(String::as_str),
        Some(""),
        "string 0 must be empty"
    );
    let s = |i: u64| strings[i as usize].clone();
    p.sample_types = raw_types.into_iter().map(|(t, u)| (s(t), s(u))).collect();
    p.period_type = (s(period_type.0), s(period_type.1));
    p.drop_frames = s(drop);
    p.mappings = raw_maps
        .into_iter()
        .map(|(id, a, b, c, f)| (id, a, b, c, s(f)))
        .collect();
    for (mut sample, key, num) in raw_samples {
        if key != 0 && s(key) == "bytes" {
            sample.bytes = num;
        }
        for id in &sample.locations {
            assert!(
                p.locations.contains_key(id),
                "sample names missing location {id}"
            );
        }
        p.samples.push(sample);
    }
    p
}
