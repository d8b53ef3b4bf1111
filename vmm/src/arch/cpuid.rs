//! CPUID normalisation: start from KVM_GET_SUPPORTED_CPUID and describe the topology we really
//! give the guest (N single-thread cores in one package), the way Firecracker does.

use kvm_bindings::kvm_cpuid_entry2;

/// Leaf 1 ECX: CMPXCHG16B. PVM's instruction emulator cannot run it (kernel mode is emulated).
pub const ECX_CX16: u32 = 1 << 13;
/// Leaf 1 ECX: running under a hypervisor.
pub const ECX_HYPERVISOR: u32 = 1 << 31;
/// Leaf 1 EDX: HTT (the package has more than one logical processor).
pub const EDX_HTT: u32 = 1 << 28;

#[derive(Clone, Copy, Debug)]
pub struct CpuidOptions {
    pub vcpu_id: u8,
    pub vcpu_count: u8,
    /// Apply the PVM-only workarounds (clear CX16).
    pub pvm: bool,
}

/// Number of bits needed to hold `n` distinct ids (ceil(log2 n)).
fn id_bits(n: u32) -> u32 {
    if n <= 1 {
        0
    } else {
        32 - (n - 1).leading_zeros()
    }
}

/// Rewrites the supported-CPUID entries for one vCPU.
pub fn normalize(entries: &mut Vec<kvm_cpuid_entry2>, opt: CpuidOptions) {
    let count = u32::from(opt.vcpu_count.max(1));
    let apic_id = u32::from(opt.vcpu_id);
    for e in entries.iter_mut() {
        match e.function {
            0x1 => {
                // EBX: [31:24] initial APIC id, [23:16] logical processors per package,
                // [15:8] CLFLUSH line size in 8-byte units.
                e.ebx = (apic_id << 24) | (count << 16) | (8 << 8) | (e.ebx & 0xff);
                e.ecx |= ECX_HYPERVISOR;
                if opt.pvm {
                    e.ecx &= !ECX_CX16;
                }
                if count > 1 {
                    e.edx |= EDX_HTT;
                } else {
                    e.edx &= !EDX_HTT;
                }
            }
            0x4 => {
                // Deterministic cache parameters: [31:26] cores per package - 1,
                // [25:14] logical processors sharing this cache - 1 (1 for L1/L2, all for L3).
                let level = (e.eax >> 5) & 0x7;
                let sharing = if level >= 3 { count - 1 } else { 0 };
                e.eax = (e.eax & 0x3fff) | ((sharing & 0xfff) << 14) | (((count - 1) & 0x3f) << 26);
            }
            0xb | 0x1f => {
                // Extended topology: level 0 = SMT (one thread per core), level 1 = core.
                e.edx = apic_id;
                match e.index {
                    0 => {
                        e.eax = 0;
                        e.ebx = 1;
                        e.ecx = 1 << 8;
                    }
                    1 => {
                        e.eax = id_bits(count);
                        e.ebx = count;
                        e.ecx = (2 << 8) | 1;
                    }
                    _ => {
                        e.eax = 0;
                        e.ebx = 0;
                        e.ecx = e.index;
                    }
                }
            }
            0x8000_0008 => {
                // AMD: [7:0] number of cores - 1, [15:12] APIC id size.
                e.ecx = (e.ecx & !0xf0ff) | ((count - 1) & 0xff) | (id_bits(count) << 12);
            }
            _ => {}
        }
    }
    // Drop a leaf 0x1f that the host CPU does not really have (eax of leaf 0 caps it).
    let max_basic = entries
        .iter()
        .find(|e| e.function == 0)
        .map(|e| e.eax)
        .unwrap_or(0);
    entries.retain(|e| e.function >= 0x4000_0000 || e.function <= max_basic);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(
        function: u32,
        index: u32,
        eax: u32,
        ebx: u32,
        ecx: u32,
        edx: u32,
    ) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            index,
            eax,
            ebx,
            ecx,
            edx,
            ..Default::default()
        }
    }

    fn sample() -> Vec<kvm_cpuid_entry2> {
        vec![
            entry(0, 0, 0xd, 0x756e_6547, 0x6c65_746e, 0x4965_6e69),
            // Host-like leaf 1: APIC id 7, 16 logical CPUs, CX16 and HTT set.
            entry(1, 0, 0x806f8, 0x0710_0800, ECX_CX16 | 1, EDX_HTT | 1),
            entry(4, 0, (1 << 5) | 0x3f << 26 | 1 << 14, 0, 0, 0),
            entry(4, 3, (3 << 5) | 0x3f << 26 | 0xff << 14, 0, 0, 0),
            entry(0xb, 0, 1, 2, 0x100, 9),
            entry(0xb, 1, 5, 16, 0x201, 9),
            entry(0xb, 2, 0, 0, 2, 9),
            entry(0x1f, 0, 1, 2, 0x100, 9),
            entry(0x4000_0000, 0, 0x4000_0001, 0x4b4d_564b, 0x564b_4d56, 0x4d),
        ]
    }

    fn find(v: &[kvm_cpuid_entry2], f: u32, i: u32) -> kvm_cpuid_entry2 {
        *v.iter().find(|e| e.function == f && e.index == i).unwrap()
    }

    #[test]
    fn one_vcpu_on_pvm() {
        let mut v = sample();
        normalize(
            &mut v,
            CpuidOptions {
                vcpu_id: 0,
                vcpu_count: 1,
                pvm: true,
            },
        );
        let l1 = find(&v, 1, 0);
        assert_eq!(l1.ebx >> 24, 0, "APIC id");
        assert_eq!((l1.ebx >> 16) & 0xff, 1, "one logical CPU");
        assert_eq!((l1.ebx >> 8) & 0xff, 8, "CLFLUSH 64 bytes");
        assert_eq!(l1.ecx & ECX_CX16, 0, "CX16 cleared on PVM");
        assert_ne!(l1.ecx & ECX_HYPERVISOR, 0);
        assert_eq!(l1.edx & EDX_HTT, 0);
        assert_eq!(l1.ecx & 1, 1, "other features kept");
        assert_eq!(find(&v, 4, 0).eax >> 26, 0);
        assert_eq!((find(&v, 4, 3).eax >> 14) & 0xfff, 0);
        assert_eq!(find(&v, 4, 3).eax & 0x1f, 0, "cache type bits untouched");
        assert_eq!(find(&v, 0xb, 1).ebx, 1);
        assert_eq!(find(&v, 0xb, 0).ebx, 1);
        assert!(
            v.iter().all(|e| e.function != 0x1f),
            "0x1f above max basic leaf dropped"
        );
        assert!(
            v.iter().any(|e| e.function == 0x4000_0000),
            "KVM leaves kept"
        );
    }

    #[test]
    fn four_vcpus_not_pvm() {
        let mut v = sample();
        normalize(
            &mut v,
            CpuidOptions {
                vcpu_id: 3,
                vcpu_count: 4,
                pvm: false,
            },
        );
        let l1 = find(&v, 1, 0);
        assert_eq!(l1.ebx >> 24, 3);
        assert_eq!((l1.ebx >> 16) & 0xff, 4);
        assert_ne!(l1.ecx & ECX_CX16, 0, "CX16 kept off PVM");
        assert_ne!(l1.edx & EDX_HTT, 0);
        assert_eq!(find(&v, 4, 0).eax >> 26, 3);
        assert_eq!((find(&v, 4, 0).eax >> 14) & 0xfff, 0, "L1 private");
        assert_eq!((find(&v, 4, 3).eax >> 14) & 0xfff, 3, "L3 shared by all");
        let t1 = find(&v, 0xb, 1);
        assert_eq!((t1.eax, t1.ebx, t1.ecx, t1.edx), (2, 4, 0x201, 3));
        let t2 = find(&v, 0xb, 2);
        assert_eq!((t2.eax, t2.ebx, t2.ecx), (0, 0, 2));
    }

    #[test]
    fn id_bits_rounds_up() {
        assert_eq!([1, 2, 3, 4, 5, 8, 9].map(id_bits), [0, 1, 2, 2, 3, 3, 4]);
    }
}
