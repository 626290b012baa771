//! The decision against RFC 5780 §4.3 (mapping) and §4.4 (filtering), RFC 4787's definitions,
//! and the classifier's own rules for corroboration, loss and the local address. Each test builds
//! the probes a network of that kind would produce and checks the answer such a network deserves.

use super::*;

use ProbeKind::{
    AllocationRandom, FilterChangeBoth, FilterChangePort, FilterControl, MapAlternateBoth,
    MapAlternateIp, MapPrimary,
};

const S1: u64 = 0x51;
const S2: u64 = 0x52;
/// The limit the classifier uses by default.
const MAX_FALSE_NEGATIVE: f64 = 1e-5;
/// The mapping socket's local address on a host with a public IP.
const PUBLIC_LOCAL: &str = "198.51.100.7:40000";
/// The mapping socket's local address behind a NAT.
const PRIVATE_LOCAL: &str = "192.168.1.10:40000";
/// Transmissions of a filtering probe that stayed silent (the default `filter_transmissions`).
const SILENT: u32 = 10;

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn reply_after(mapped: &str, transmissions: u32) -> ProbeOutcome {
    ProbeOutcome::Reply {
        mapped: addr(mapped),
        other_address: None,
        source: addr("192.0.2.1:3478"),
        rtt: Duration::from_millis(20),
        transmissions,
    }
}

fn reply(mapped: &str) -> ProbeOutcome {
    reply_after(mapped, 1)
}

fn silence(transmissions: u32) -> ProbeOutcome {
    ProbeOutcome::NoReply { transmissions }
}

fn probe(server: u64, kind: ProbeKind, outcome: ProbeOutcome) -> Probe {
    Probe {
        server,
        kind,
        socket: SocketId(1),
        destination: addr("192.0.2.1:3478"),
        change: ChangeRequest::NONE,
        outcome,
    }
}

/// One server's complete tests: the mapping socket's mapped addresses for the primary address
/// (X1), the alternate IP (X2) and the alternate IP and port (X3); then the filtering socket's
/// control and whether "change IP and port" and "change port" were answered.
fn server(id: u64, x: [&str; 3], change_both: bool, change_port: bool) -> Vec<Probe> {
    let filter_mapped = "203.0.113.5:50001";
    let answer = |answered: bool| {
        if answered {
            reply(filter_mapped)
        } else {
            silence(SILENT)
        }
    };
    vec![
        probe(id, MapPrimary, reply(x[0])),
        probe(id, MapAlternateIp, reply(x[1])),
        probe(id, MapAlternateBoth, reply(x[2])),
        probe(id, FilterControl, reply(filter_mapped)),
        probe(id, FilterChangeBoth, answer(change_both)),
        probe(id, FilterChangePort, answer(change_port)),
    ]
}

/// X1 = X2 = X3.
fn same(x: &str) -> [&str; 3] {
    [x, x, x]
}

const EIM: [&str; 3] = ["203.0.113.5:50000"; 3];
const ADM: [&str; 3] = [
    "203.0.113.5:50000",
    "203.0.113.5:50002",
    "203.0.113.5:50002",
];
const APDM: [&str; 3] = [
    "203.0.113.5:50000",
    "203.0.113.5:50002",
    "203.0.113.5:50003",
];

/// Filtering answers: (change IP and port answered, change port answered).
const EIF: (bool, bool) = (true, true);
const ADF: (bool, bool) = (false, true);
const APDF: (bool, bool) = (false, false);

fn one(x: [&str; 3], filtering: (bool, bool)) -> Vec<Probe> {
    server(S1, x, filtering.0, filtering.1)
}

fn evidence<'a>(probes: &'a [Probe], usable: &'a [u64], local: &str) -> Evidence<'a> {
    Evidence {
        probes,
        usable,
        local: Some(addr(local)),
        max_false_negative: MAX_FALSE_NEGATIVE,
    }
}

/// The answer with `S1` the one usable server, for a mapping socket bound to `local`.
fn answer(probes: &[Probe], local: &str) -> Classification {
    classification(&evidence(probes, &[S1], local), false)
}

fn inconclusive(reason: ClassifyInconclusive) -> Classification {
    Classification::Inconclusive(reason)
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-12 * a.abs().max(b.abs())
}

// ---------------------------------------------------------------------------------------------
// Mapping (RFC 5780 §4.3)

#[test]
fn the_same_mapping_for_every_destination_is_endpoint_independent() {
    assert_eq!(
        mapping_of(&one(EIM, EIF), S1),
        Some(Mapping::EndpointIndependent)
    );
}

#[test]
fn a_new_mapping_per_destination_ip_only_is_address_dependent() {
    assert_eq!(
        mapping_of(&one(ADM, EIF), S1),
        Some(Mapping::AddressDependent)
    );
}

#[test]
fn a_new_mapping_per_destination_port_is_address_and_port_dependent() {
    assert_eq!(
        mapping_of(&one(APDM, EIF), S1),
        Some(Mapping::AddressAndPortDependent)
    );
}

#[test]
fn a_mapping_that_changes_only_with_the_port_is_not_endpoint_independent() {
    // RFC 5780's test II would stop at X1 == X2 and say endpoint-independent; but X3 differs,
    // and by RFC 4787 §4.1 a mapping reused only for some destination ports depends on the port.
    let x = [
        "203.0.113.5:50000",
        "203.0.113.5:50000",
        "203.0.113.5:50009",
    ];
    assert_eq!(
        mapping_of(&one(x, EIF), S1),
        Some(Mapping::AddressAndPortDependent)
    );
}

#[test]
fn no_mapping_result_until_all_three_mapping_probes_replied() {
    let mut probes = one(EIM, EIF);
    probes[2].outcome = ProbeOutcome::Pending;
    assert_eq!(mapping_of(&probes, S1), None);
    probes[2].outcome = silence(8);
    assert_eq!(mapping_of(&probes, S1), None);
    assert_eq!(
        mapping_of(&probes, S2),
        None,
        "another server has no probes"
    );
}

// ---------------------------------------------------------------------------------------------
// Filtering (RFC 5780 §4.4)

#[test]
fn an_answer_from_the_other_ip_and_port_is_endpoint_independent_filtering() {
    assert_eq!(
        filtering_of(&one(EIM, EIF), S1),
        Some(Filtering::EndpointIndependent)
    );
    // Test II answered settles it, whatever test III did.
    assert_eq!(
        filtering_of(&one(EIM, (true, false)), S1),
        Some(Filtering::EndpointIndependent)
    );
}

#[test]
fn only_an_answer_from_the_other_port_is_address_dependent_filtering() {
    assert_eq!(
        filtering_of(&one(EIM, ADF), S1),
        Some(Filtering::AddressDependent)
    );
}

#[test]
fn silence_to_both_is_address_and_port_dependent_filtering() {
    assert_eq!(
        filtering_of(&one(EIM, APDF), S1),
        Some(Filtering::AddressAndPortDependent)
    );
}

#[test]
fn no_filtering_result_while_a_probe_is_pending_failed_or_refused() {
    for outcome in [
        ProbeOutcome::Pending,
        ProbeOutcome::Failed,
        ProbeOutcome::ErrorResponse { code: 420 },
    ] {
        let mut probes = one(EIM, APDF);
        probes[4].outcome = outcome;
        assert_eq!(filtering_of(&probes, S1), None, "{outcome:?}");
        let mut probes = one(EIM, APDF);
        probes[5].outcome = outcome;
        assert_eq!(filtering_of(&probes, S1), None, "{outcome:?}");
    }
}

// ---------------------------------------------------------------------------------------------
// Verdicts

#[test]
fn a_public_address_without_filtering_is_open() {
    let probes = one(same(PUBLIC_LOCAL), EIF);
    assert_eq!(answer(&probes, PUBLIC_LOCAL), Classification::Open);
}

#[test]
fn a_public_address_with_filtering_is_a_firewall() {
    let probes = one(same(PUBLIC_LOCAL), ADF);
    assert_eq!(
        answer(&probes, PUBLIC_LOCAL),
        Classification::Firewall(Filtering::AddressDependent)
    );
    let probes = one(same(PUBLIC_LOCAL), APDF);
    assert_eq!(
        answer(&probes, PUBLIC_LOCAL),
        Classification::Firewall(Filtering::AddressAndPortDependent)
    );
}

#[test]
fn a_translated_address_is_a_nat_of_each_mapping_and_filtering() {
    let mappings = [
        (EIM, Mapping::EndpointIndependent),
        (ADM, Mapping::AddressDependent),
        (APDM, Mapping::AddressAndPortDependent),
    ];
    let filterings = [
        (EIF, Filtering::EndpointIndependent),
        (ADF, Filtering::AddressDependent),
        (APDF, Filtering::AddressAndPortDependent),
    ];
    for (x, mapping) in mappings {
        for (f, filtering) in filterings {
            assert_eq!(
                answer(&one(x, f), PRIVATE_LOCAL),
                Classification::Nat { mapping, filtering },
                "{mapping:?} {filtering:?}"
            );
        }
    }
}

#[test]
fn a_public_ip_with_another_port_is_a_nat() {
    // Same IP as the local one, but the port was rewritten: translation all the same.
    let probes = one(same("198.51.100.7:61000"), EIF);
    assert_eq!(
        answer(&probes, PUBLIC_LOCAL),
        Classification::Nat {
            mapping: Mapping::EndpointIndependent,
            filtering: Filtering::EndpointIndependent,
        }
    );
}

#[test]
fn two_agreeing_servers_give_their_common_answer() {
    let mut probes = server(S1, ADM, ADF.0, ADF.1);
    probes.extend(server(S2, ADM, ADF.0, ADF.1));
    let e = evidence(&probes, &[S1, S2], PRIVATE_LOCAL);
    assert_eq!(
        classification(&e, false),
        Classification::Nat {
            mapping: Mapping::AddressDependent,
            filtering: Filtering::AddressDependent,
        }
    );
    assert_eq!(verdicts(&e).0.len(), 2);
}

#[test]
fn no_reply_at_all_is_blocked() {
    let mut probes = one(EIM, APDF);
    for p in &mut probes {
        p.outcome = silence(8);
    }
    let e = evidence(&probes, &[S1], PRIVATE_LOCAL);
    assert_eq!(classification(&e, false), Classification::Blocked);
    assert_eq!(classification(&e, true), Classification::Blocked);
}

// ---------------------------------------------------------------------------------------------
// Inconclusive, one reason at a time

#[test]
fn the_deadline_before_any_server_completed_is_inconclusive() {
    let probes = vec![
        probe(S1, MapPrimary, reply("203.0.113.5:50000")),
        probe(S1, MapAlternateIp, ProbeOutcome::Pending),
        probe(S1, FilterControl, reply("203.0.113.5:50001")),
        probe(S1, FilterChangeBoth, ProbeOutcome::Pending),
    ];
    let e = evidence(&probes, &[S1], PRIVATE_LOCAL);
    assert_eq!(
        classification(&e, true),
        inconclusive(ClassifyInconclusive::Deadline)
    );
    // Without the deadline the same evidence just has no usable server yet.
    assert_eq!(
        classification(&e, false),
        inconclusive(ClassifyInconclusive::NoUsableServer)
    );
}

#[test]
fn the_deadline_after_a_server_completed_still_answers() {
    let probes = one(EIM, EIF);
    let e = evidence(&probes, &[S1], PRIVATE_LOCAL);
    assert_eq!(classification(&e, true), classification(&e, false));
    assert!(matches!(
        classification(&e, true),
        Classification::Nat { .. }
    ));
}

#[test]
fn a_server_that_is_not_usable_does_not_count() {
    // Complete, consistent results, but the machine found the server unusable (its alternate
    // address was a lie, say).
    let probes = one(EIM, EIF);
    let e = evidence(&probes, &[], PRIVATE_LOCAL);
    assert_eq!(
        classification(&e, false),
        inconclusive(ClassifyInconclusive::NoUsableServer)
    );
    // An unusable server cannot spoil a usable one's answer either.
    let mut probes = server(S1, EIM, EIF.0, EIF.1);
    probes.extend(server(S2, APDM, APDF.0, APDF.1));
    let e = evidence(&probes, &[S1], PRIVATE_LOCAL);
    assert_eq!(
        classification(&e, false),
        Classification::Nat {
            mapping: Mapping::EndpointIndependent,
            filtering: Filtering::EndpointIndependent,
        }
    );
}

#[test]
fn servers_that_disagree_on_the_mapping_are_inconclusive() {
    let mut probes = server(S1, EIM, EIF.0, EIF.1);
    probes.extend(server(S2, APDM, EIF.0, EIF.1));
    let e = evidence(&probes, &[S1, S2], PRIVATE_LOCAL);
    assert_eq!(
        classification(&e, false),
        inconclusive(ClassifyInconclusive::MappingDisagrees)
    );
}

#[test]
fn endpoint_independence_must_hold_across_servers() {
    // Each server alone sees one mapping for all its addresses, but not the same one: the
    // mapping depends on the destination after all.
    let mut probes = server(S1, same("203.0.113.5:50000"), EIF.0, EIF.1);
    probes.extend(server(S2, same("203.0.113.5:50100"), EIF.0, EIF.1));
    let e = evidence(&probes, &[S1, S2], PRIVATE_LOCAL);
    assert_eq!(
        classification(&e, false),
        inconclusive(ClassifyInconclusive::MappingDisagrees)
    );
}

#[test]
fn servers_that_disagree_on_the_filtering_are_inconclusive() {
    let mut probes = server(S1, EIM, EIF.0, EIF.1);
    probes.extend(server(S2, EIM, ADF.0, ADF.1));
    let e = evidence(&probes, &[S1, S2], PRIVATE_LOCAL);
    assert_eq!(
        classification(&e, false),
        inconclusive(ClassifyInconclusive::FilteringDisagrees)
    );
}

#[test]
fn an_unknown_local_ip_with_the_port_kept_is_inconclusive() {
    // Bound to 0.0.0.0: a mapped address with our port is either no NAT or a port-preserving one.
    let probes = one(same("203.0.113.5:40000"), EIF);
    assert_eq!(
        answer(&probes, "0.0.0.0:40000"),
        inconclusive(ClassifyInconclusive::LocalAddressUnknown)
    );
    // Another port proves translation even without the local IP.
    let probes = one(same("203.0.113.5:50000"), EIF);
    assert_eq!(
        answer(&probes, "0.0.0.0:40000"),
        Classification::Nat {
            mapping: Mapping::EndpointIndependent,
            filtering: Filtering::EndpointIndependent,
        }
    );
}

#[test]
fn silence_on_a_lossy_path_is_inconclusive() {
    // Every expected reply needed 4 transmissions: three in four packets are lost, so ten
    // unanswered transmissions prove little.
    let mut probes = one(EIM, ADF);
    for p in probes.iter_mut().take(4) {
        p.outcome = reply_after("203.0.113.5:50000", 4);
    }
    let e = evidence(&probes, &[S1], PRIVATE_LOCAL);
    assert!(false_negative_chance(&e) > MAX_FALSE_NEGATIVE);
    assert_eq!(
        classification(&e, false),
        inconclusive(ClassifyInconclusive::SilenceNotConclusive)
    );
    // On the same path a reply is proof: endpoint-independent filtering rests on no silence.
    let mut probes = one(EIM, EIF);
    for p in probes.iter_mut().take(4) {
        p.outcome = reply_after("203.0.113.5:50000", 4);
    }
    let e = evidence(&probes, &[S1], PRIVATE_LOCAL);
    assert_eq!(false_negative_chance(&e), 0.0);
    assert!(matches!(
        classification(&e, false),
        Classification::Nat {
            filtering: Filtering::EndpointIndependent,
            ..
        }
    ));
}

#[test]
fn a_second_server_corroborates_silence() {
    // Five silent transmissions on one server are not enough at the estimated loss; the same
    // silence on a second, independent server is.
    let short = |id| {
        let mut p = server(id, EIM, ADF.0, ADF.1);
        p[4].outcome = silence(5);
        p
    };
    let probes = short(S1);
    let e = evidence(&probes, &[S1], PRIVATE_LOCAL);
    assert_eq!(
        classification(&e, false),
        inconclusive(ClassifyInconclusive::SilenceNotConclusive)
    );
    let mut probes = short(S1);
    probes.extend(short(S2));
    let e = evidence(&probes, &[S1, S2], PRIVATE_LOCAL);
    assert_eq!(
        classification(&e, false),
        Classification::Nat {
            mapping: Mapping::EndpointIndependent,
            filtering: Filtering::AddressDependent,
        }
    );
}

// ---------------------------------------------------------------------------------------------
// Loss and confidence

#[test]
fn a_clean_record_estimates_little_but_some_loss() {
    // Four replies at the first transmission, plus the imagined loss and success: 1 in 6.
    let probes = one(EIM, EIF);
    let e = evidence(&probes, &[S1], PRIVATE_LOCAL);
    assert!(close(loss_estimate(&e), 1.0 / 6.0));
    // Nothing at all: the prior alone, one loss in two.
    let e = evidence(&[], &[S1], PRIVATE_LOCAL);
    assert!(close(loss_estimate(&e), 0.5));
}

#[test]
fn retransmissions_and_silence_count_as_losses() {
    let mut probes = one(EIM, EIF);
    // Replied at the third transmission: two losses, one success.
    probes[0].outcome = reply_after("203.0.113.5:50000", 3);
    let e = evidence(&probes, &[S1], PRIVATE_LOCAL);
    // lost 1 + 2, sent 2 + 3 + 1 + 1 + 1.
    assert!(close(loss_estimate(&e), 3.0 / 8.0));
    // Allocation probes speak for the path too: a silent one after 2 transmissions.
    probes.push(probe(S2, AllocationRandom, silence(2)));
    let e = evidence(&probes, &[S1], PRIVATE_LOCAL);
    assert!(close(loss_estimate(&e), 5.0 / 10.0));
}

#[test]
fn filtering_probes_and_incomplete_servers_say_nothing_about_loss() {
    let base = one(EIM, APDF);
    let e = evidence(&base, &[S1], PRIVATE_LOCAL);
    // The two silent filtering probes (10 transmissions each) are left out.
    assert!(close(loss_estimate(&e), 1.0 / 6.0));
    // A second server that never completed (down, or a black-hole alternate) is left out too.
    let mut probes = base.clone();
    probes.push(probe(S2, MapPrimary, silence(8)));
    probes.push(probe(S2, FilterControl, silence(8)));
    let e = evidence(&probes, &[S1, S2], PRIVATE_LOCAL);
    assert!(close(loss_estimate(&e), 1.0 / 6.0));
    // And so is a complete server that is not usable.
    let mut probes = base;
    let mut other = server(S2, EIM, EIF.0, EIF.1);
    other[0].outcome = reply_after("203.0.113.5:50000", 7);
    probes.extend(other);
    let e = evidence(&probes, &[S1], PRIVATE_LOCAL);
    assert!(close(loss_estimate(&e), 1.0 / 6.0));
}

#[test]
fn the_false_negative_chance_is_the_loss_to_the_power_of_the_silent_transmissions() {
    let q: f64 = 1.0 / 6.0;
    // Address-dependent: the decisive silence is "change IP and port".
    let probes = one(EIM, ADF);
    let e = evidence(&probes, &[S1], PRIVATE_LOCAL);
    assert!(close(false_negative_chance(&e), q.powi(SILENT as i32)));
    // Address-and-port-dependent: the decisive silence is "change port".
    let mut probes = one(EIM, APDF);
    probes[5].outcome = silence(7);
    let e = evidence(&probes, &[S1], PRIVATE_LOCAL);
    assert!(close(false_negative_chance(&e), q.powi(7)));
    // Filtering shown by a reply: no chance of a false negative.
    let probes = one(EIM, EIF);
    let e = evidence(&probes, &[S1], PRIVATE_LOCAL);
    assert_eq!(false_negative_chance(&e), 0.0);
}

#[test]
fn the_chances_of_agreeing_servers_multiply() {
    let mut probes = server(S1, EIM, ADF.0, ADF.1);
    probes.extend(server(S2, EIM, ADF.0, ADF.1));
    let e = evidence(&probes, &[S1, S2], PRIVATE_LOCAL);
    // Eight clean replies: loss 1 in 10, and ten silent transmissions on each server.
    let q: f64 = 0.1;
    assert!(close(loss_estimate(&e), q));
    assert!(close(false_negative_chance(&e), q.powi(20)));
}

// ---------------------------------------------------------------------------------------------
// Repeated attempts (the adaptive budget)

/// The filtering probes of `server` with `attempts` more attempts of `kind` appended.
fn with_attempts(mut probes: Vec<Probe>, kind: ProbeKind, attempts: &[ProbeOutcome]) -> Vec<Probe> {
    let server = probes.first().map_or(S1, |p| p.server);
    probes.extend(attempts.iter().map(|o| probe(server, kind, *o)));
    probes
}

#[test]
fn attempts_at_one_test_add_up_their_silence() {
    let probes = with_attempts(one(EIM, ADF), FilterChangeBoth, &[silence(10), silence(4)]);
    assert_eq!(
        outcome_of(&probes, S1, FilterChangeBoth),
        Some(silence(SILENT + 14))
    );
    assert_eq!(filtering_of(&probes, S1), Some(Filtering::AddressDependent));
    // An attempt still running, or cut short by the budget, adds nothing and takes nothing away.
    let probes = with_attempts(one(EIM, ADF), FilterChangeBoth, &[ProbeOutcome::Pending]);
    assert_eq!(
        outcome_of(&probes, S1, FilterChangeBoth),
        Some(silence(SILENT))
    );
    assert!(in_flight(&probes, S1, FilterChangeBoth));
    assert!(!in_flight(&probes, S1, FilterChangePort));
}

#[test]
fn a_reply_to_any_attempt_is_a_reply() {
    // The first train was lost, the second answered: endpoint-independent, whatever came first.
    let answered = reply("203.0.113.5:50001");
    let probes = with_attempts(one(EIM, APDF), FilterChangeBoth, &[silence(10), answered]);
    assert_eq!(outcome_of(&probes, S1, FilterChangeBoth), Some(answered));
    assert_eq!(
        filtering_of(&probes, S1),
        Some(Filtering::EndpointIndependent)
    );
    // And a reply to a repeated "change port" turns address-and-port-dependent into
    // address-dependent.
    let probes = with_attempts(one(EIM, APDF), FilterChangePort, &[answered]);
    assert_eq!(filtering_of(&probes, S1), Some(Filtering::AddressDependent));
}

#[test]
fn a_spoilt_attempt_spoils_the_test() {
    for bad in [
        ProbeOutcome::Failed,
        ProbeOutcome::ErrorResponse { code: 420 },
    ] {
        let probes = with_attempts(one(EIM, ADF), FilterChangeBoth, &[bad, silence(10)]);
        assert_eq!(outcome_of(&probes, S1, FilterChangeBoth), Some(bad));
        assert_eq!(filtering_of(&probes, S1), None, "{bad:?}");
    }
}

/// `S1`'s complete tests on a path where every expected reply needed `k` transmissions.
fn lossy(filtering: (bool, bool), k: u32) -> Vec<Probe> {
    let mut probes = one(EIM, filtering);
    for p in probes.iter_mut().take(4) {
        p.outcome = reply_after("203.0.113.5:50000", k);
    }
    probes
}

#[test]
fn silence_that_loss_could_explain_is_worth_repeating_until_it_cannot() {
    // Every reply needed two transmissions: loss (4 + 1) / (8 + 2) = 1/2, and ten silent
    // transmissions leave a chance of 2^-10, above the limit.
    let probes = lossy(ADF, 2);
    let e = evidence(&probes, &[S1], PRIVATE_LOCAL);
    assert!(close(loss_estimate(&e), 0.5));
    assert_eq!(worth_repeating(&e), vec![(S1, FilterChangeBoth)]);
    assert_eq!(
        classification(&e, false),
        inconclusive(ClassifyInconclusive::SilenceNotConclusive)
    );
    // While an attempt runs, nothing more is asked for.
    let running = with_attempts(probes.clone(), FilterChangeBoth, &[ProbeOutcome::Pending]);
    assert!(worth_repeating(&evidence(&running, &[S1], PRIVATE_LOCAL)).is_empty());
    // Seven more silent transmissions: 2^-17 < 1e-5. Settled, and the answer follows.
    let more = with_attempts(probes, FilterChangeBoth, &[silence(7)]);
    let e = evidence(&more, &[S1], PRIVATE_LOCAL);
    assert!(worth_repeating(&e).is_empty());
    assert_eq!(
        classification(&e, false),
        Classification::Nat {
            mapping: Mapping::EndpointIndependent,
            filtering: Filtering::AddressDependent,
        }
    );
}

#[test]
fn the_silence_repeated_is_the_one_the_result_rests_on() {
    // Address-and-port-dependent: "change port".
    let probes = lossy(APDF, 2);
    let e = evidence(&probes, &[S1], PRIVATE_LOCAL);
    assert_eq!(worth_repeating(&e), vec![(S1, FilterChangePort)]);
    // Once "change port" answered, the result is address-dependent and rests on "change IP and
    // port" instead.
    let probes = with_attempts(probes, FilterChangePort, &[reply("203.0.113.5:50001")]);
    let e = evidence(&probes, &[S1], PRIVATE_LOCAL);
    assert_eq!(worth_repeating(&e), vec![(S1, FilterChangeBoth)]);
}

#[test]
fn nothing_is_repeated_without_doubt() {
    // A clean path (loss 1/6): ten silent transmissions are conclusive.
    let probes = one(EIM, APDF);
    assert!(worth_repeating(&evidence(&probes, &[S1], PRIVATE_LOCAL)).is_empty());
    // A reply is conclusive at any loss.
    let probes = lossy(EIF, 4);
    assert!(worth_repeating(&evidence(&probes, &[S1], PRIVATE_LOCAL)).is_empty());
    // A server without a mapping result, or not usable, is not worth the probes.
    let mut probes = lossy(ADF, 2);
    probes[2].outcome = silence(8);
    assert!(worth_repeating(&evidence(&probes, &[S1], PRIVATE_LOCAL)).is_empty());
    let probes = lossy(ADF, 2);
    assert!(worth_repeating(&evidence(&probes, &[S2], PRIVATE_LOCAL)).is_empty());
}

#[test]
fn each_server_must_be_sure_on_its_own() {
    // Two agreeing servers together are sure enough (their chances multiply), but each is asked
    // to be sure alone, so that losing one of them later cannot leave a doubtful answer.
    let mut probes = server(S1, EIM, ADF.0, ADF.1);
    probes.extend(server(S2, EIM, ADF.0, ADF.1));
    for p in probes.iter_mut() {
        if matches!(
            p.kind,
            MapPrimary | MapAlternateIp | MapAlternateBoth | FilterControl
        ) {
            p.outcome = reply_after("203.0.113.5:50000", 2);
        }
    }
    let e = evidence(&probes, &[S1, S2], PRIVATE_LOCAL);
    let q = loss_estimate(&e);
    assert!(
        q.powi(20) <= MAX_FALSE_NEGATIVE && q.powi(10) > MAX_FALSE_NEGATIVE,
        "{q}"
    );
    assert!(matches!(
        classification(&e, false),
        Classification::Nat { .. }
    ));
    assert_eq!(
        worth_repeating(&e),
        vec![(S1, FilterChangeBoth), (S2, FilterChangeBoth)]
    );
}
