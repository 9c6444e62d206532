//! Proxies whose `X-Forwarded-For` is believed (`TRUSTED_PROXIES`).

use anyhow::Context as _;

/// Proxies whose `X-Forwarded-For` is believed: addresses and CIDR ranges.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TrustedProxies {
    ranges: Vec<(std::net::IpAddr, u8)>,
}

impl TrustedProxies {
    /// `10.0.0.0/8, 192.0.2.7, ::1`.
    pub fn parse(list: &str) -> anyhow::Result<TrustedProxies> {
        let mut ranges = Vec::new();
        for item in list.split(',').map(str::trim).filter(|i| !i.is_empty()) {
            let (address, bits) = match item.split_once('/') {
                Some((address, bits)) => (address, Some(bits)),
                None => (item, None),
            };
            let address: std::net::IpAddr = address
                .parse()
                .with_context(|| format!("{item:?} is not an IP address or CIDR range"))?;
            let max = if address.is_ipv4() { 32 } else { 128 };
            let bits = match bits {
                None => max,
                Some(bits) => bits
                    .parse()
                    .ok()
                    .filter(|b| *b <= max)
                    .with_context(|| format!("{item:?} has a bad prefix length"))?,
            };
            ranges.push((address, bits));
        }
        Ok(TrustedProxies { ranges })
    }

    /// Loopback, IPv4 and IPv6: where the Functions host connects from.
    pub fn with_loopback(mut self) -> Self {
        self.ranges
            .push((std::net::IpAddr::from([127, 0, 0, 0]), 8));
        self.ranges
            .push((std::net::IpAddr::from(std::net::Ipv6Addr::LOCALHOST), 128));
        self
    }

    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }

    pub fn contains(&self, address: std::net::IpAddr) -> bool {
        let address = canonical_ip(address);
        self.ranges
            .iter()
            .any(|&(network, bits)| match (canonical_ip(network), address) {
                (std::net::IpAddr::V4(n), std::net::IpAddr::V4(a)) => {
                    let mask = u32::MAX.checked_shl(32 - u32::from(bits)).unwrap_or(0);
                    u32::from(n) & mask == u32::from(a) & mask
                }
                (std::net::IpAddr::V6(n), std::net::IpAddr::V6(a)) => {
                    let mask = u128::MAX.checked_shl(128 - u32::from(bits)).unwrap_or(0);
                    u128::from(n) & mask == u128::from(a) & mask
                }
                _ => false,
            })
    }
}

/// An IPv4-mapped IPv6 address (`::ffff:192.0.2.1`) as the IPv4 address it is.
pub fn canonical_ip(address: std::net::IpAddr) -> std::net::IpAddr {
    match address {
        std::net::IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(address, std::net::IpAddr::V4),
        v4 => v4,
    }
}
