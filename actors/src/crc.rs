//! CRC32C (Castagnoli) arithmetic that the `crc32c` crate does slowly: the CRC of two
//! byte strings joined, from the CRCs of each. The crate squares 32×32 bit matrices
//! for every bit of the length (tens of microseconds a call); this multiplies by
//! precomputed powers of x, a few dozen carry-less steps (zlib 1.2.12's method). The
//! journal combines a record's payload CRC with its LSN's under its lock, once a record.

/// The CRC32C polynomial, bits reflected.
const POLY: u32 = 0x82F6_3B78;

/// `a · b` modulo the polynomial, bits reflected (the top bit is x⁰).
const fn multiply(a: u32, mut b: u32) -> u32 {
    if a == 0 {
        return 0;
    }
    let mut m = 1u32 << 31;
    let mut p = 0u32;
    loop {
        if a & m != 0 {
            p ^= b;
            if a & (m - 1) == 0 {
                return p;
            }
        }
        m >>= 1;
        b = if b & 1 != 0 { (b >> 1) ^ POLY } else { b >> 1 };
    }
}

/// `x^(2^k)` modulo the polynomial, for every k a 64-bit byte count can need
/// (3 + 64: the count is of bytes, 2³ bits each). zlib's table of 32 repeats itself
/// for its own polynomial; for this one the powers do not cycle after 32.
const X2N: [u32; 67] = {
    let mut table = [0u32; 67];
    let mut p = 1u32 << 30; // x¹
    let mut k = 0;
    while k < 67 {
        table[k] = p;
        p = multiply(p, p);
        k += 1;
    }
    table
};

/// `x^(8·n)` modulo the polynomial: what shifting a CRC past `n` bytes multiplies by.
fn x8n(mut n: u64) -> u32 {
    let mut power = 1u32 << 31; // x⁰
    let mut k = 3; // 8 = 2³
    while n != 0 {
        if n & 1 != 0 {
            power = multiply(X2N[k], power);
        }
        n >>= 1;
        k += 1;
    }
    power
}

/// The CRC32C of `A ‖ B`, given `crc32c(A)`, `crc32c(B)` and the length of `B`.
pub fn combine(crc_a: u32, crc_b: u32, len_b: usize) -> u32 {
    multiply(x8n(len_b as u64), crc_a) ^ crc_b
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `x^(8·n)` by shifting one byte at a time from x⁰, without the table.
    fn x8n_slowly(n: u64) -> u32 {
        let x1 = 1u32 << 30;
        let x2 = multiply(x1, x1);
        let x4 = multiply(x2, x2);
        let x8 = multiply(x4, x4);
        (0..n).fold(1u32 << 31, |p, _| multiply(x8, p))
    }

    #[test]
    fn powers_of_x_agree_with_shifting_byte_by_byte() {
        for n in [0, 1, 2, 3, 100, 4096, 70_000] {
            assert_eq!(x8n(n), x8n_slowly(n), "{n} bytes");
        }
        // Past 2³² bits (512 MiB), where a table of 32 powers would wrap around (and
        // give x¹ for x^(2³²)): the power of a sum is the product of the powers.
        let big = (1u64 << 29) + 5;
        assert_eq!(x8n(big), multiply(x8n(1 << 29), x8n(5)));
        assert_eq!(x8n(1 << 29), multiply(x8n(1 << 28), x8n(1 << 28)));
        assert_eq!(x8n(1 << 40), multiply(x8n(1 << 39), x8n(1 << 39)));
    }

    #[test]
    fn combining_gives_the_crc_of_the_joined_bytes() {
        let bytes: Vec<u8> = (0..70_000u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        for split in [0, 1, 7, 8, 9, 100, 4096, 65_535, 69_999, 70_000] {
            let (a, b) = bytes.split_at(split);
            let whole = crc32c::crc32c(&bytes);
            let joined = combine(crc32c::crc32c(a), crc32c::crc32c(b), b.len());
            assert_eq!(joined, whole, "split at {split}");
            assert_eq!(
                joined,
                crc32c::crc32c_combine(crc32c::crc32c(a), crc32c::crc32c(b), b.len())
            );
        }
    }
}
