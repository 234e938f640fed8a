//! API tokens and roles. A token is 32 random bytes shown once, as hex; only its SHA-256 is
//! stored. A 256-bit random secret needs no salt or slow hash: nothing about it can be guessed,
//! and the hash alone does not let anyone present it.

use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// What a token's holder may do.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    utoipa::ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Practitioner,
    Supervisor,
    Auditor,
    Admin,
}

impl Role {
    pub const ALL: [Role; 4] = [
        Role::Practitioner,
        Role::Supervisor,
        Role::Auditor,
        Role::Admin,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Practitioner => "practitioner",
            Role::Supervisor => "supervisor",
            Role::Auditor => "auditor",
            Role::Admin => "admin",
        }
    }
}

impl std::str::FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Role::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| {
                format!("unknown role {s:?}: use practitioner, supervisor, auditor or admin")
            })
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A stored token: its hash, never the token itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRecord {
    /// `sha256:<hex>` of the token.
    pub hash: String,
    pub role: Role,
    pub subject: String,
    pub created_at: String,
}

/// A new token and the record to store for it.
pub fn issue(role: Role, subject: &str) -> (String, TokenRecord) {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    let token = format!("sg_{}", hex::encode(bytes));
    let record = TokenRecord {
        hash: hash(&token),
        role,
        subject: subject.to_owned(),
        created_at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
    };
    (token, record)
}

/// `sha256:<hex>` of a presented token.
pub fn hash(token: &str) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(token.as_bytes())))
}

/// The tokens the service accepts, held in memory and compared in constant time.
#[derive(Debug, Default, Clone)]
pub struct Tokens {
    records: Vec<TokenRecord>,
}

impl Tokens {
    pub fn new(records: Vec<TokenRecord>) -> Self {
        Tokens { records }
    }

    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    pub fn add(&mut self, record: TokenRecord) {
        self.records.push(record);
    }

    /// The record for `token`, comparing against every stored hash in constant time so the
    /// time taken says nothing about which hash (or how much of one) matched.
    pub fn authenticate(&self, token: &str) -> Option<&TokenRecord> {
        let presented = hash(token);
        let mut found = None;
        for record in &self.records {
            if bool::from(record.hash.as_bytes().ct_eq(presented.as_bytes())) {
                found = Some(record);
            }
        }
        found
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_issued_token_authenticates_and_another_does_not() {
        let (token, record) = issue(Role::Supervisor, "sam");
        assert!(!record.hash.contains(&token[3..]));
        let tokens = Tokens::new(vec![record]);
        assert_eq!(tokens.authenticate(&token).unwrap().subject, "sam");
        assert!(tokens.authenticate("sg_0000").is_none());
    }

    #[test]
    fn roles_parse_from_their_names() {
        assert_eq!("auditor".parse::<Role>().unwrap(), Role::Auditor);
        assert!("boss".parse::<Role>().is_err());
    }
}
