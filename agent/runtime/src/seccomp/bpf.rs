//! A tiny classic-BPF assembler: instructions with symbolic jump labels, resolved into
//! the `sock_filter` array the kernel's seccomp loader takes.

/// One classic BPF instruction as the kernel lays it out (`struct sock_filter`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SockFilter {
    /// Operation code.
    pub code: u16,
    /// Jump offset when the condition holds.
    pub jt: u8,
    /// Jump offset when it does not.
    pub jf: u8,
    /// Immediate operand.
    pub k: u32,
}

// Opcodes (linux/bpf_common.h).
/// BPF_LD | BPF_W | BPF_ABS (BPF_LD and BPF_W are 0).
pub const LD_W_ABS: u16 = 0x20;
pub const ALU_AND_K: u16 = 0x04 | 0x50; // BPF_ALU | BPF_AND | BPF_K
pub const JMP_JA: u16 = 0x05; // BPF_JMP | BPF_JA
pub const JMP_JEQ_K: u16 = 0x05 | 0x10; // BPF_JMP | BPF_JEQ | BPF_K
pub const JMP_JGT_K: u16 = 0x05 | 0x20;
pub const JMP_JGE_K: u16 = 0x05 | 0x30;
pub const RET_K: u16 = 0x06;

/// Where a jump goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    /// The next instruction (offset 0).
    Next,
    /// A label placed with [`Program::place`].
    Label(usize),
}

#[derive(Clone, Copy, Debug)]
struct Insn {
    code: u16,
    jt: Target,
    jf: Target,
    k: u32,
}

/// A program under construction.
#[derive(Default)]
pub struct Program {
    insns: Vec<Insn>,
    labels: Vec<Option<usize>>,
}

/// Largest program the kernel accepts (BPF_MAXINSNS).
pub const MAX_INSNS: usize = 4096;

impl Program {
    /// Reserves a new label, to be placed later.
    pub fn label(&mut self) -> usize {
        self.labels.push(None);
        self.labels.len() - 1
    }

    /// Places `label` at the next instruction.
    pub fn place(&mut self, label: usize) {
        self.labels[label] = Some(self.insns.len());
    }

    /// `A = seccomp_data[offset]` (32-bit load).
    pub fn load(&mut self, offset: u32) {
        self.push(LD_W_ABS, Target::Next, Target::Next, offset);
    }

    /// `A &= k`.
    pub fn and(&mut self, k: u32) {
        self.push(ALU_AND_K, Target::Next, Target::Next, k);
    }

    /// Conditional jump comparing A with `k`.
    pub fn jump(&mut self, code: u16, k: u32, jt: Target, jf: Target) {
        self.push(code, jt, jf, k);
    }

    /// Unconditional jump to `label`.
    pub fn goto(&mut self, label: usize) {
        self.push(JMP_JA, Target::Next, Target::Next, label as u32 | GOTO_FLAG);
    }

    /// Returns `action` to the kernel.
    pub fn ret(&mut self, action: u32) {
        self.push(RET_K, Target::Next, Target::Next, action);
    }

    fn push(&mut self, code: u16, jt: Target, jf: Target, k: u32) {
        self.insns.push(Insn { code, jt, jf, k });
    }

    /// Resolves labels into offsets.
    pub fn assemble(&self) -> Result<Vec<SockFilter>, String> {
        if self.insns.len() > MAX_INSNS {
            return Err(format!(
                "the filter needs {} BPF instructions, more than the kernel's limit of {MAX_INSNS}",
                self.insns.len()
            ));
        }
        let at = |label: usize| -> Result<usize, String> {
            self.labels
                .get(label)
                .copied()
                .flatten()
                .ok_or_else(|| format!("BPF label {label} was never placed"))
        };
        let mut out = Vec::with_capacity(self.insns.len());
        for (i, insn) in self.insns.iter().enumerate() {
            let rel = |t: Target| -> Result<u8, String> {
                match t {
                    Target::Next => Ok(0),
                    Target::Label(l) => {
                        let to = at(l)?;
                        let off = to
                            .checked_sub(i + 1)
                            .ok_or_else(|| "BPF jump backwards".to_string())?;
                        u8::try_from(off).map_err(|_| "BPF conditional jump too far".to_string())
                    }
                }
            };
            let (jt, jf, k) = if insn.code == JMP_JA {
                let to = at((insn.k & !GOTO_FLAG) as usize)?;
                (0, 0, (to - (i + 1)) as u32)
            } else {
                (rel(insn.jt)?, rel(insn.jf)?, insn.k)
            };
            out.push(SockFilter {
                code: insn.code,
                jt,
                jf,
                k,
            });
        }
        Ok(out)
    }
}

const GOTO_FLAG: u32 = 0x8000_0000;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_resolve_to_relative_offsets() {
        let mut p = Program::default();
        let end = p.label();
        p.load(0);
        p.jump(JMP_JEQ_K, 7, Target::Label(end), Target::Next);
        p.ret(1);
        p.goto(end);
        p.place(end);
        p.ret(2);
        let f = p.assemble().unwrap();
        assert_eq!(f[1].jt, 2, "jeq from index 1 to index 4");
        assert_eq!(f[1].jf, 0);
        assert_eq!(f[3].k, 0, "ja to the very next instruction");
        assert_eq!(f[4].k, 2);
    }

    #[test]
    fn unplaced_label_is_an_error() {
        let mut p = Program::default();
        let l = p.label();
        p.goto(l);
        assert!(p.assemble().is_err());
    }
}
