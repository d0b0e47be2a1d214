/// GPT-2's byte-level alphabet: every byte gets a printable character so that BPE vocabularies can be written as
/// text. Printable Latin-1 bytes stand for themselves; the other 68 bytes (controls, space, 0x7F–0xA0, 0xAD) are
/// given the code points U+0100, U+0101, … in byte order, which is why a space is spelled `Ġ` (U+0120).
enum ByteLevel {
    static let byteToChar: [Unicode.Scalar] = {
        var table = [Unicode.Scalar](repeating: "\0", count: 256)
        var next: UInt32 = 256
        for b in 0..<256 {
            let printable = (0x21...0x7E).contains(b) || (0xA1...0xAC).contains(b) || (0xAE...0xFF).contains(b)
            if printable {
                table[b] = Unicode.Scalar(UInt8(b))
            } else {
                table[b] = Unicode.Scalar(next)!
                next += 1
            }
        }
        return table
    }()

    /// Indexed by code point (all alphabet characters are below U+0144); -1 where a character is not in the alphabet.
    static let charToByte: [Int16] = {
        var table = [Int16](repeating: -1, count: 0x144)
        for (b, c) in byteToChar.enumerated() { table[Int(c.value)] = Int16(b) }
        return table
    }()

    /// The byte-level spelling of raw bytes, e.g. `" the"` → `"Ġthe"`.
    static func spell<S: Sequence<UInt8>>(_ bytes: S) -> String {
        var s = String.UnicodeScalarView()
        for b in bytes { s.append(byteToChar[Int(b)]) }
        return String(s)
    }

    /// The bytes a token stands for, as the `tokenizers` ByteLevel decoder computes them: the token's characters
    /// mapped back through the alphabet, or, if any character is outside it (typically an added token such as
    /// `<｜end▁of▁sentence｜>`), the token's own UTF-8.
    static func bytes(of token: String) -> [UInt8] {
        var out: [UInt8] = []
        out.reserveCapacity(token.unicodeScalars.count)
        for c in token.unicodeScalars {
            guard c.value < 0x144, charToByte[Int(c.value)] >= 0 else { return Array(token.utf8) }
            out.append(UInt8(charToByte[Int(c.value)]))
        }
        return out
    }
}

/// Byte-level BPE over integer ids, as `tokenizers`' `BPE` model does it: start from one symbol per byte, then
/// repeatedly apply the lowest-ranked merge present in the word (leftmost first on ties) until none applies.
struct BPE {
    /// Vocabulary id of the single-character token for each byte, -1 if the vocabulary lacks it.
    let byteIds: [Int32]
    /// (left id << 32 | right id) → (rank << 32 | merged id).
    let merges: [UInt64: UInt64]
    /// With `ignore_merges`, a pre-token that is itself a vocabulary entry is emitted whole, without merging (keyed by
    /// the raw bytes it stands for). Nil when the option is off.
    let wholeWords: [[UInt8]: Int]?
    /// `tokenizers` replaces a byte missing from the vocabulary with the unknown token, or drops it when there is none.
    let unkId: Int?

    /// - Parameters:
    ///   - vocab: byte-level spelling (as UTF-8) → id.
    ///   - merges: pairs of byte-level spellings, in rank order.
    init(vocab: [[UInt8]: Int], merges mergeList: [([UInt8], [UInt8])], ignoreMerges: Bool, unkId: Int?,
         file: String) throws {
        var byteIds = [Int32](repeating: -1, count: 256)
        for b in 0..<256 {
            if let id = vocab[Array(String(ByteLevel.byteToChar[b]).utf8)] { byteIds[b] = Int32(id) }
        }
        self.byteIds = byteIds

        var merges: [UInt64: UInt64] = [:]
        merges.reserveCapacity(mergeList.count)
        for (rank, (a, b)) in mergeList.enumerated() {
            guard let left = vocab[a], let right = vocab[b], let merged = vocab[a + b] else {
                let name = String(decoding: a, as: UTF8.self) + " " + String(decoding: b, as: UTF8.self)
                throw ModelFileError(file, "merge \(rank) '\(name)' names a token that is not in the vocabulary")
            }
            // A repeated pair ends up with its last rank: `tokenizers` collects the list into a map, later entries winning.
            merges[UInt64(left) << 32 | UInt64(right)] = UInt64(rank) << 32 | UInt64(merged)
        }
        self.merges = merges

        if ignoreMerges {
            var whole: [[UInt8]: Int] = [:]
            whole.reserveCapacity(vocab.count)
            for (spelling, id) in vocab {
                whole[ByteLevel.bytes(of: String(decoding: spelling, as: UTF8.self))] = id
            }
            wholeWords = whole
        } else {
            wholeWords = nil
        }
        self.unkId = unkId
    }

    /// Appends the ids of one pre-token (raw bytes) to `out`.
    func encode(_ word: ArraySlice<UInt8>, into out: inout [Int]) {
        if let wholeWords, let id = wholeWords[Array(word)] {
            out.append(id)
            return
        }
        var symbols: [Int32] = []
        symbols.reserveCapacity(word.count)
        for b in word {
            let id = byteIds[Int(b)]
            if id >= 0 {
                symbols.append(id)
            } else if let unkId {
                symbols.append(Int32(unkId))
            }
        }
        if symbols.count > 1 { merge(&symbols) }
        for s in symbols where s >= 0 { out.append(Int(s)) }
    }

    /// Merges in place; merged-away symbols are left as -1. A min-heap of (rank, position) rather than rescanning
    /// the word for every merge keeps long pre-tokens (runs of spaces, long digit or symbol strings) O(n log n).
    private func merge(_ symbols: inout [Int32]) {
        let n = symbols.count
        var next = [Int32](unsafeUninitializedCapacity: n) { buf, count in
            for i in 0..<n { buf[i] = Int32(i + 1) }
            buf[n - 1] = -1
            count = n
        }
        var prev = [Int32](unsafeUninitializedCapacity: n) { buf, count in
            for i in 0..<n { buf[i] = Int32(i - 1) }
            count = n
        }
        var heap = MinHeap()
        for i in 0..<(n - 1) {
            if let m = merges[UInt64(UInt32(symbols[i])) << 32 | UInt64(UInt32(symbols[i + 1]))] {
                heap.push(m & 0xFFFF_FFFF_0000_0000 | UInt64(i))
            }
        }
        while let top = heap.pop() {
            let rank = top >> 32
            let pos = Int(top & 0xFFFF_FFFF)
            let right = Int(next[pos])
            // Entries go stale when a neighbour was merged first; skip those whose pair is no longer this merge.
            guard symbols[pos] >= 0, right >= 0,
                  let m = merges[UInt64(UInt32(symbols[pos])) << 32 | UInt64(UInt32(symbols[right]))],
                  m >> 32 == rank else { continue }
            symbols[pos] = Int32(truncatingIfNeeded: m & 0xFFFF_FFFF)
            symbols[right] = -1
            let after = Int(next[right])
            next[pos] = Int32(after)
            if after >= 0 { prev[after] = Int32(pos) }
            let before = Int(prev[pos])
            if before >= 0, let m = merges[UInt64(UInt32(symbols[before])) << 32 | UInt64(UInt32(symbols[pos]))] {
                heap.push(m & 0xFFFF_FFFF_0000_0000 | UInt64(before))
            }
            if after >= 0, let m = merges[UInt64(UInt32(symbols[pos])) << 32 | UInt64(UInt32(symbols[after]))] {
                heap.push(m & 0xFFFF_FFFF_0000_0000 | UInt64(pos))
            }
        }
    }
}

/// Binary min-heap of (rank << 32 | position): pops the lowest rank, and the leftmost position among equal ranks.
private struct MinHeap {
    private var a: [UInt64] = []

    mutating func push(_ v: UInt64) {
        a.append(v)
        var i = a.count - 1
        while i > 0 {
            let p = (i - 1) / 2
            if a[p] <= v { break }
            a[i] = a[p]
            i = p
        }
        a[i] = v
    }

    mutating func pop() -> UInt64? {
        guard let last = a.popLast() else { return nil }
        guard !a.isEmpty else { return last }
        let top = a[0]
        var i = 0
        let n = a.count
        while true {
            var c = 2 * i + 1
            if c >= n { break }
            if c + 1 < n && a[c + 1] < a[c] { c += 1 }
            if last <= a[c] { break }
            a[i] = a[c]
            i = c
        }
        a[i] = last
        return top
    }
}
