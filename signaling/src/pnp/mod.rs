//! The PNP name registry: names mapped to owner-signed values, with expiry and increasing versions,
//! served over UDP and length-prefixed TCP by a sans-IO server machine and queried by a sans-IO
//! client machine. (Being written; see the issue tracker.)
