//! RFC 2136 dynamic updates signed with TSIG (RFC 8945), on hickory-proto's message types and
//! signer, over TCP (an update with its prerequisites can outgrow a UDP datagram, and TCP gives
//! one clear error when the server is down). Connections are kept open and reused, one exchange
//! at a time on each.

use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use bulwark_crds::dns::{RRSet, RecordType as PlanRecordType, TsigAlgorithm};
use hickory_proto::dnssec::rdata::tsig::TsigAlgorithm as HickoryTsigAlgorithm;
use hickory_proto::dnssec::tsig::TSigner;
use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode, UpdateMessage};
use hickory_proto::rr::rdata::{A, AAAA, TXT};
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::fencing::{Fence, FenceGuard, fence_name};
use super::provider::{DnsProvider, ProviderError, WriteOutcome};

/// Seconds of clock skew the server tolerates on a signature.
const TSIG_FUDGE: u16 = 300;

/// Idle connections kept per client (unless it opens one per exchange). BIND serves 150 TCP clients at once by default
/// (`tcp-clients`), idle ones included, and every replica keeps its own.
const MAX_IDLE_CONNECTIONS: usize = 8;

/// A zone on one primary server, updated with one TSIG key. Clones share idle connections.
#[derive(Clone)]
pub struct Rfc2136 {
    server: String,
    zone: Name,
    signer: TSigner,
    timeout: Duration,
    idle: Arc<Mutex<Vec<TcpStream>>>,
    max_idle: usize,
}

impl Rfc2136 {
    /// `secret_base64` is the key as BIND's `tsig-keygen` prints it.
    pub fn new(
        server: &str,
        zone: &str,
        key_name: &str,
        algorithm: TsigAlgorithm,
        secret_base64: &str,
        timeout: Duration,
    ) -> Result<Self, ProviderError> {
        let secret = base64::engine::general_purpose::STANDARD
            .decode(secret_base64.trim())
            .map_err(|e| ProviderError::Config(format!("TSIG secret is not base64: {e}")))?;
        let algorithm = match algorithm {
            TsigAlgorithm::HmacSha256 => HickoryTsigAlgorithm::HmacSha256,
            TsigAlgorithm::HmacSha384 => HickoryTsigAlgorithm::HmacSha384,
            TsigAlgorithm::HmacSha512 => HickoryTsigAlgorithm::HmacSha512,
        };
        let signer = TSigner::new(secret, algorithm, fqdn_name(key_name)?, TSIG_FUDGE)
            .map_err(|e| ProviderError::Config(format!("TSIG key: {e}")))?;
        Ok(Rfc2136 {
            server: server.to_owned(),
            zone: fqdn_name(zone)?,
            signer,
            timeout,
            idle: Arc::default(),
            max_idle: MAX_IDLE_CONNECTIONS,
        })
    }

    /// This client opens a new connection for every exchange instead of reusing one.
    pub fn with_new_connection_per_exchange(mut self) -> Self {
        self.max_idle = 0;
        self
    }

    /// The name as an absolute DNS name, refused unless it lies inside the zone.
    fn name_in_zone(&self, fqdn: &str) -> Result<Name, ProviderError> {
        let name = fqdn_name(fqdn)?;
        if !self.zone.zone_of(&name) {
            return Err(ProviderError::Config(format!(
                "{} is outside zone {}",
                name, self.zone
            )));
        }
        Ok(name)
    }

    fn update_message(&self) -> Message {
        let mut message = Message::new();
        message
            .set_message_type(MessageType::Query)
            .set_op_code(OpCode::Update)
            .set_recursion_desired(false);
        let mut zone = Query::new();
        zone.set_name(self.zone.clone())
            .set_query_class(DNSClass::IN)
            .set_query_type(RecordType::SOA);
        message.add_zone(zone);
        message
    }

    /// An UPDATE that (after the guard's prerequisites, if any) deletes the name's managed
    /// RRsets and its fence; callers add what replaces them. Returns the name, the fence name
    /// and it.
    fn clearing_update(
        &self,
        fqdn: &str,
        guard: Option<&FenceGuard>,
    ) -> Result<(Name, Name, Message), ProviderError> {
        let name = self.name_in_zone(fqdn)?;
        let fence = self.name_in_zone(&fence_name(fqdn))?;
        let mut message = self.update_message();
        let absent = |owner: &Name, record_type| {
            // RFC 2136 2.4.3: the RRset does not exist.
            let mut absent = Record::update0(owner.clone(), 0, record_type);
            absent.set_dns_class(DNSClass::NONE);
            absent
        };
        if let Some(guard) = guard {
            message.add_pre_requisite(match &guard.expect {
                // RFC 2136 2.4.2: the RRset exists and equals exactly this value.
                Some(expected) => fence_record(&fence, expected, 0),
                None => absent(&fence, RecordType::TXT),
            });
            if guard.name_unclaimed {
                message.add_pre_requisite(absent(&name, RecordType::A));
                message.add_pre_requisite(absent(&name, RecordType::AAAA));
            }
        }
        for (owner, managed) in [
            (&name, RecordType::A),
            (&name, RecordType::AAAA),
            (&fence, RecordType::TXT),
        ] {
            // RFC 2136 2.5.2: delete the whole RRset.
            let mut delete = Record::update0(owner.clone(), 0, managed);
            delete.set_dns_class(DNSClass::ANY);
            message.add_update(delete);
        }
        Ok((name, fence, message))
    }

    /// A signed SOA query for the zone apex: proves the server answers for the zone and accepts
    /// the key (a wrong secret or key name comes back as NOTAUTH with the TSIG error).
    pub async fn probe(&self) -> Result<(), ProviderError> {
        let response = self.query(&self.zone, RecordType::SOA).await?;
        response
            .answers()
            .iter()
            .find(|record| matches!(record.data(), RData::SOA(_)))
            .map(drop)
            .ok_or_else(|| {
                ProviderError::BadResponse(format!(
                    "no SOA record for {} in the answer: the server is not authoritative for it",
                    self.zone
                ))
            })
    }

    async fn send_update(&self, message: Message) -> Result<WriteOutcome, ProviderError> {
        let response = self.exchange(message).await?;
        match response.response_code() {
            ResponseCode::NoError => Ok(WriteOutcome::Applied),
            ResponseCode::YXRRSet | ResponseCode::NXRRSet => Ok(WriteOutcome::FenceMismatch),
            other => Err(ProviderError::Rejected {
                rcode: mnemonic(other),
                detail: "unexpected answer to an update".into(),
            }),
        }
    }

    async fn query(&self, name: &Name, record_type: RecordType) -> Result<Message, ProviderError> {
        let mut message = Message::new();
        message
            .set_message_type(MessageType::Query)
            .set_op_code(OpCode::Query)
            .set_recursion_desired(false);
        message.add_query(Query::query(name.clone(), record_type));
        self.exchange(message).await
    }

    /// Send one signed message and return the verified response. Server refusals come back as
    /// [`ProviderError::Rejected`] quoting the response code; prerequisite failures (YXRRSET,
    /// NXRRSET) are returned as responses for the caller to interpret.
    async fn exchange(&self, mut message: Message) -> Result<Message, ProviderError> {
        let id: u16 = rand::random();
        message.set_id(id);
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("clock after 1970")
            .as_secs() as u32;
        let mut verifier = message
            .finalize(&self.signer, now)
            .map_err(|e| ProviderError::Config(format!("signing: {e}")))?;
        let request = message
            .to_vec()
            .map_err(|e| ProviderError::Config(format!("encoding: {e}")))?;
        let response = tokio::time::timeout(self.timeout, self.round_trip(&request))
            .await
            .map_err(|_| ProviderError::Unreachable {
                server: self.server.clone(),
                reason: format!("no answer within {:?}", self.timeout),
            })?
            .map_err(|e| ProviderError::Unreachable {
                server: self.server.clone(),
                reason: e.to_string(),
            })?;
        let parsed = Message::from_vec(&response)
            .map_err(|e| ProviderError::BadResponse(format!("undecodable: {e}")))?;
        if parsed.id() != id {
            return Err(ProviderError::BadResponse(format!(
                "answer id {} does not match request id {id}",
                parsed.id()
            )));
        }
        let code = parsed.response_code();
        // NXDOMAIN answers a query for a name without records; YXRRSET/NXRRSET report a failed
        // update prerequisite. Both are answers, not faults.
        if !matches!(
            code,
            ResponseCode::NoError
                | ResponseCode::NXDomain
                | ResponseCode::YXRRSet
                | ResponseCode::NXRRSet
        ) {
            // An error answer to a bad signature is itself unsigned, so report it unverified.
            return Err(ProviderError::Rejected {
                rcode: mnemonic(code),
                detail: rejection_detail(code, &response),
            });
        }
        if let Some(verify) = verifier.as_mut() {
            verify(&response).map_err(|e| {
                ProviderError::BadResponse(format!("answer signature does not verify: {e}"))
            })?;
        }
        Ok(parsed)
    }

    /// One exchange on an idle connection, else a new one. The server closes connections idle
    /// too long (BIND: 30 s) and then none of the idle ones are worth trying; the request goes
    /// out again on a new connection. Sending an UPDATE twice is safe: its fence prerequisite
    /// fails the second time if the first one was applied after all.
    async fn round_trip(&self, request: &[u8]) -> std::io::Result<Vec<u8>> {
        let idle = self.idle_connections().pop();
        if let Some(mut stream) = idle {
            if let Ok(response) = exchange_on(&mut stream, request).await {
                self.keep(stream);
                return Ok(response);
            }
            self.idle_connections().clear();
        }
        let mut stream = TcpStream::connect(&self.server).await?;
        stream.set_nodelay(true)?;
        let response = exchange_on(&mut stream, request).await?;
        self.keep(stream);
        Ok(response)
    }

    fn keep(&self, stream: TcpStream) {
        let mut idle = self.idle_connections();
        if idle.len() < self.max_idle {
            idle.push(stream);
        }
    }

    fn idle_connections(&self) -> std::sync::MutexGuard<'_, Vec<TcpStream>> {
        self.idle.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// One length-framed DNS message out and its answer back (RFC 1035 4.2.2).
async fn exchange_on(stream: &mut TcpStream, request: &[u8]) -> std::io::Result<Vec<u8>> {
    let length = u16::try_from(request.len()).map_err(std::io::Error::other)?;
    let mut framed = Vec::with_capacity(request.len() + 2);
    framed.extend_from_slice(&length.to_be_bytes());
    framed.extend_from_slice(request);
    stream.write_all(&framed).await?;
    let length = stream.read_u16().await? as usize;
    let mut response = vec![0; length];
    stream.read_exact(&mut response).await?;
    Ok(response)
}

impl DnsProvider for Rfc2136 {
    async fn read_fence(&self, fqdn: &str) -> Result<Option<Fence>, ProviderError> {
        let name = self.name_in_zone(&fence_name(fqdn))?;
        fence_in(&self.query(&name, RecordType::TXT).await?, &name)
    }

    async fn write_plan(
        &self,
        fqdn: &str,
        fence: &Fence,
        rrsets: &[RRSet],
        guard: Option<&FenceGuard>,
    ) -> Result<WriteOutcome, ProviderError> {
        let (name, fence_owner, mut message) = self.clearing_update(fqdn, guard)?;
        for record in plan_records(&name, rrsets)? {
            message.add_update(record);
        }
        message.add_update(fence_record(&fence_owner, fence, 0));
        self.send_update(message).await
    }

    async fn remove_name(
        &self,
        fqdn: &str,
        tombstone: &Fence,
        guard: &FenceGuard,
    ) -> Result<WriteOutcome, ProviderError> {
        let (_, fence_owner, mut message) = self.clearing_update(fqdn, Some(guard))?;
        message.add_update(fence_record(&fence_owner, tombstone, 0));
        self.send_update(message).await
    }

    async fn served_records(&self, fqdn: &str) -> Result<Vec<RRSet>, ProviderError> {
        let name = self.name_in_zone(fqdn)?;
        let mut rrsets = Vec::new();
        for plan_type in [PlanRecordType::A, PlanRecordType::AAAA] {
            let response = self.query(&name, record_type(plan_type)).await?;
            rrsets.extend(rrset_in(&response, plan_type));
        }
        Ok(rrsets)
    }

    async fn delete_records(&self, fqdn: &str, rrsets: &[RRSet]) -> Result<(), ProviderError> {
        let name = self.name_in_zone(fqdn)?;
        let mut message = self.update_message();
        for mut record in plan_records(&name, rrsets)? {
            // RFC 2136 2.5.4: delete exactly this RR.
            record.set_dns_class(DNSClass::NONE).set_ttl(0);
            message.add_update(record);
        }
        self.exchange(message).await.map(drop)
    }
}

fn record_type(plan_type: PlanRecordType) -> RecordType {
    match plan_type {
        PlanRecordType::A => RecordType::A,
        PlanRecordType::AAAA => RecordType::AAAA,
    }
}

/// The fence an answer to a TXT query for the fence name carries. An answer is untrusted input:
/// anything but none or one value Bulwark wrote is refused with what it held.
fn fence_in(response: &Message, name: &Name) -> Result<Option<Fence>, ProviderError> {
    let values: Vec<String> = response
        .answers()
        .iter()
        .filter_map(|record| match record.data() {
            RData::TXT(txt) => Some(txt_string(txt)),
            _ => None,
        })
        .collect();
    match values.as_slice() {
        [] => Ok(None),
        [single] if Fence::parse(single).is_some() => Ok(Fence::parse(single)),
        foreign => Err(ProviderError::Config(format!(
            "fence {name} TXT holds {foreign:?}, which Bulwark did not write; delete that record to let Bulwark manage the name"
        ))),
    }
}

/// The answer's records of one type, canonicalised like a plan's RRsets (sorted addresses).
fn rrset_in(response: &Message, plan_type: PlanRecordType) -> Option<RRSet> {
    let wanted = record_type(plan_type);
    let answers: Vec<&Record> = response
        .answers()
        .iter()
        .filter(|r| r.record_type() == wanted)
        .collect();
    let first = answers.first()?;
    let mut values: Vec<IpAddr> = answers
        .iter()
        .filter_map(|r| match r.data() {
            RData::A(a) => Some(IpAddr::V4(a.0)),
            RData::AAAA(a) => Some(IpAddr::V6(a.0)),
            _ => None,
        })
        .collect();
    values.sort();
    Some(RRSet {
        record_type: plan_type,
        ttl: first.ttl(),
        values: values.iter().map(ToString::to_string).collect(),
    })
}

fn fqdn_name(name: &str) -> Result<Name, ProviderError> {
    let mut parsed = Name::from_ascii(name)
        .map_err(|e| ProviderError::Config(format!("{name:?} is not a DNS name: {e}")))?;
    parsed.set_fqdn(true);
    Ok(parsed)
}

fn fence_record(owner: &Name, fence: &Fence, ttl: u32) -> Record {
    Record::from_rdata(
        owner.clone(),
        ttl,
        RData::TXT(TXT::new(vec![fence.value()])),
    )
}

fn plan_records(name: &Name, rrsets: &[RRSet]) -> Result<Vec<Record>, ProviderError> {
    let mut records = Vec::new();
    for rrset in rrsets {
        for value in &rrset.values {
            let address: IpAddr = value
                .parse()
                .map_err(|e| ProviderError::Config(format!("{value:?} in plan: {e}")))?;
            let data = match (rrset.record_type, address) {
                (PlanRecordType::A, IpAddr::V4(a)) => RData::A(A(a)),
                (PlanRecordType::AAAA, IpAddr::V6(a)) => RData::AAAA(AAAA(a)),
                (record_type, _) => {
                    return Err(ProviderError::Config(format!(
                        "{value} is not a {record_type:?} address"
                    )));
                }
            };
            records.push(Record::from_rdata(name.clone(), rrset.ttl, data));
        }
    }
    Ok(records)
}

/// The RFC 1035/2136 mnemonic operators know from `dig` and server logs.
fn mnemonic(code: ResponseCode) -> String {
    match code {
        ResponseCode::FormErr => "FORMERR".into(),
        ResponseCode::ServFail => "SERVFAIL".into(),
        ResponseCode::NotImp => "NOTIMP".into(),
        ResponseCode::Refused => "REFUSED".into(),
        ResponseCode::YXDomain => "YXDOMAIN".into(),
        ResponseCode::NotAuth => "NOTAUTH".into(),
        ResponseCode::NotZone => "NOTZONE".into(),
        other => format!("RCODE{}", u16::from(other)),
    }
}

fn txt_string(txt: &TXT) -> String {
    txt.txt_data()
        .iter()
        .map(|part| String::from_utf8_lossy(part))
        .collect()
}

/// What to tell a human about an error answer. For NOTAUTH the TSIG error (RFC 8945 5.3) says
/// which part of the key is wrong; it sits at the end of the TSIG record, the message's last RR.
fn rejection_detail(code: ResponseCode, response: &[u8]) -> String {
    let tsig_error = match response {
        // BADTIME: Error(2) then 6 bytes of server time (checked first: that time may end in 0 0).
        [.., 0, 18, 0, 6, _, _, _, _, _, _] => Some(18),
        // Error(2) then an empty Other Data: BADSIG, BADKEY.
        [.., e1, e2, 0, 0] => Some(u16::from_be_bytes([*e1, *e2])),
        _ => None,
    };
    match (code, tsig_error) {
        (ResponseCode::NotAuth, Some(16)) => {
            "TSIG BADSIG: the key name is known but the secret or algorithm differs".into()
        }
        (ResponseCode::NotAuth, Some(17)) => {
            "TSIG BADKEY: the server has no key with this name and algorithm".into()
        }
        (ResponseCode::NotAuth, Some(18)) => {
            "TSIG BADTIME: the clocks of Bulwark and the server differ by more than 300 s".into()
        }
        (ResponseCode::NotAuth, _) => {
            "the server is not authoritative for the zone, or refused the key".into()
        }
        (ResponseCode::Refused, _) => {
            "the server refused the update (is the key allowed to update this zone?)".into()
        }
        (ResponseCode::NotZone, _) => "a name in the update is outside the zone".into(),
        (ResponseCode::ServFail, _) => "the server failed to process the request".into(),
        (other, _) => format!("response code {other}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Answers come off the network: any bytes must decode or be refused, and whatever decodes
    /// must be read (fence, records, error detail) without a panic.
    #[test]
    fn fuzz_dns_answers() {
        let name = fqdn_name("_bulwark.api.example.com").unwrap();
        bolero::check!().for_each(|bytes: &[u8]| {
            if let Ok(message) = Message::from_vec(bytes) {
                let _ = fence_in(&message, &name);
                let _ = rrset_in(&message, PlanRecordType::A);
                let _ = rrset_in(&message, PlanRecordType::AAAA);
                let _ = rejection_detail(message.response_code(), bytes);
            }
        });
    }

    #[test]
    fn error_answers_name_the_rcode_and_the_tsig_error() {
        let tsig_error = |error: u16, other: &[u8]| {
            let mut tail = vec![0xaa, 0xbb];
            tail.extend_from_slice(&error.to_be_bytes());
            tail.extend_from_slice(&(other.len() as u16).to_be_bytes());
            tail.extend_from_slice(other);
            tail
        };
        let cases = [
            (
                ResponseCode::NotAuth,
                tsig_error(16, &[]),
                "NOTAUTH",
                "BADSIG",
            ),
            (
                ResponseCode::NotAuth,
                tsig_error(17, &[]),
                "NOTAUTH",
                "BADKEY",
            ),
            (
                ResponseCode::NotAuth,
                tsig_error(18, &[0; 6]),
                "NOTAUTH",
                "BADTIME",
            ),
            (
                ResponseCode::Refused,
                vec![],
                "REFUSED",
                "refused the update",
            ),
            (
                ResponseCode::ServFail,
                vec![],
                "SERVFAIL",
                "failed to process",
            ),
            (ResponseCode::NotZone, vec![], "NOTZONE", "outside the zone"),
        ];
        for (code, response, rcode, detail) in cases {
            assert_eq!(mnemonic(code), rcode);
            let text = rejection_detail(code, &response);
            assert!(text.contains(detail), "{rcode}: {text}");
        }
    }
}
