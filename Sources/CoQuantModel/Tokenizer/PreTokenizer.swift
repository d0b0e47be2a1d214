/// The pre-tokenizers of the supported byte-level BPE tokenizers: each cuts text into the pieces that BPE then
/// encodes one by one, exactly where the reference regex (run by Oniguruma inside `tokenizers`) would cut it.
///
/// The regexes are implemented by hand over Unicode scalars instead of with NSRegularExpression: on Linux
/// NSRegularExpression (ICU through Foundation, UTF-16) is slow on a megabyte of text and its Unicode classes and
/// `\s` are not quite Oniguruma's. Classes used, as in Oniguruma: `\p{L}` = general categories Lu Ll Lt Lm Lo,
/// `\p{N}` = Nd Nl No, `\s` = the Unicode White_Space property (so NBSP is whitespace; ZERO WIDTH SPACE and the BOM,
/// category Cf, are not).
///
/// A regex alternation takes, at each position, the first alternative that matches there; the matchers below keep
/// that order and reproduce each alternative's backtracking. Text between matches would become a piece of its own
/// (`Isolated` split), but with these regexes every character starts some match.
enum PreTokenizer: String {
    /// `ByteLevel(use_regex: true)`: `'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+`
    case gpt2 = "gpt2"
    /// `Sequence[Digits(individual_digits: true), ByteLevel(use_regex: true)]`: every digit is a piece of its own,
    /// the GPT-2 regex runs on the text between digits.
    case gpt2Digits = "gpt2+digits"
    /// `Split(Regex(qwen2Pattern), Isolated)` then `ByteLevel(use_regex: false)`.
    case qwen2 = "qwen2"
    /// Same as `qwen2`, but numbers are split into runs of up to three digits.
    case llama3 = "llama3"

    static let qwen2Pattern =
        #"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"#
    static let llama3Pattern =
        #"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"#

    // Character classes, one per scalar. `other` = [^\s\p{L}\p{N}].
    static let other: UInt8 = 0, letter: UInt8 = 1, number: UInt8 = 2, space: UInt8 = 3

    private static let asciiClasses: [UInt8] = (0..<128).map { classify(Unicode.Scalar(UInt8($0))) }

    static func characterClass(_ v: UInt32) -> UInt8 {
        v < 128 ? asciiClasses[Int(v)] : classify(Unicode.Scalar(v)!)
    }

    private static func classify(_ c: Unicode.Scalar) -> UInt8 {
        let p = c.properties
        if p.isWhitespace { return space }
        switch p.generalCategory {
        case .uppercaseLetter, .lowercaseLetter, .titlecaseLetter, .modifierLetter, .otherLetter: return letter
        case .decimalNumber, .letterNumber, .otherNumber: return number
        default: return other
        }
    }

    /// Calls `emit(start, end)` for each piece of `scalars` (code points, with `classes` from `characterClass`), in order.
    func split(_ scalars: UnsafeBufferPointer<UInt32>, _ classes: UnsafeBufferPointer<UInt8>, _ emit: (Int, Int) -> Void) {
        let n = scalars.count
        switch self {
        case .gpt2:
            Self.splitGPT2(scalars, classes, 0, n, emit)
        case .gpt2Digits:
            var start = 0
            for i in 0..<n where classes[i] == Self.number {
                Self.splitGPT2(scalars, classes, start, i, emit)
                emit(i, i + 1)
                start = i + 1
            }
            Self.splitGPT2(scalars, classes, start, n, emit)
        case .qwen2, .llama3:
            let maxDigits = self == .llama3 ? 3 : 1
            var i = 0
            while i < n {
                var end = Self.matchQwen2(scalars, classes, i, n, maxDigits)
                if end <= i { end = i + 1 }
                emit(i, end)
                i = end
            }
        }
    }

    private static func splitGPT2(_ s: UnsafeBufferPointer<UInt32>, _ cls: UnsafeBufferPointer<UInt8>, _ lo: Int, _ hi: Int,
                                  _ emit: (Int, Int) -> Void) {
        var i = lo
        while i < hi {
            var end = matchGPT2(s, cls, i, hi)
            if end <= i { end = i + 1 }
            emit(i, end)
            i = end
        }
    }

    /// End of the GPT-2 regex match starting at `i` (the text ends at `n`).
    private static func matchGPT2(_ s: UnsafeBufferPointer<UInt32>, _ cls: UnsafeBufferPointer<UInt8>, _ i: Int, _ n: Int) -> Int {
        // 's|'t|'re|'ve|'m|'ll|'d  (lower case only)
        if s[i] == 0x27, i + 1 < n {
            switch s[i + 1] {
            case 0x73, 0x74, 0x6D, 0x64: return i + 2                                    // s t m d
            case 0x72 where i + 2 < n && s[i + 2] == 0x65: return i + 3                  // re
            case 0x76 where i + 2 < n && s[i + 2] == 0x65: return i + 3                  // ve
            case 0x6C where i + 2 < n && s[i + 2] == 0x6C: return i + 3                  // ll
            default: break
            }
        }
        // ` ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+`: an optional space, then a run of one class. After a space the
        // class of the next character picks the alternative; on anything else the optional space backtracks away
        // and a space cannot start a run.
        var j = i
        if s[i] == 0x20, i + 1 < n, cls[i + 1] != space { j = i + 1 }
        let c = cls[j]
        if c != space { return run(cls, c, j, n) }
        return matchTrailingSpace(cls, i, n)
    }

    /// `\s+(?!\S)|\s+` at a whitespace character `i`. The greedy run backtracks by one character when a
    /// non-space follows it, so that the last space can start the next piece (`"  word"` → `" "`, `" word"`);
    /// a single space before a non-space falls through to the plain `\s+`.
    private static func matchTrailingSpace(_ cls: UnsafeBufferPointer<UInt8>, _ i: Int, _ n: Int) -> Int {
        let r = run(cls, space, i, n)
        if r == n { return n }
        return r - i >= 2 ? r - 1 : r
    }

    /// End of the Qwen2 / Llama-3 regex match starting at `i`.
    private static func matchQwen2(_ s: UnsafeBufferPointer<UInt32>, _ cls: UnsafeBufferPointer<UInt8>, _ i: Int, _ n: Int,
                                   _ maxDigits: Int) -> Int {
        // (?i:'s|'t|'re|'ve|'m|'ll|'d)
        if s[i] == 0x27, i + 1 < n {
            let a = foldedASCII(s[i + 1]), b = i + 2 < n ? foldedASCII(s[i + 2]) : 0
            switch a {
            case 0x73, 0x74, 0x6D, 0x64: return i + 2                                    // s t m d
            case 0x72 where b == 0x65, 0x76 where b == 0x65, 0x6C where b == 0x6C: return i + 3  // re ve ll
            default: break
            }
        }
        let c = cls[i]
        let isCRLF = s[i] == 0x0D || s[i] == 0x0A
        // [^\r\n\p{L}\p{N}]?\p{L}+: a letter run, optionally led by one character that is not a line break, letter
        // or digit (a space, a tab, an NBSP, punctuation: `(x` and `"Hello` are single pieces).
        if c == letter { return run(cls, letter, i, n) }
        if c != number, !isCRLF, i + 1 < n, cls[i + 1] == letter { return run(cls, letter, i + 1, n) }
        // \p{N} or \p{N}{1,3}
        if c == number { return min(run(cls, number, i, n), i + maxDigits) }
        // ` ?[^\s\p{L}\p{N}]+[\r\n]*`: punctuation (after an optional space) takes the line breaks that follow it.
        var j = i
        if s[i] == 0x20, i + 1 < n, cls[i + 1] == other { j = i + 1 }
        if cls[j] == other {
            var e = run(cls, other, j, n)
            while e < n, s[e] == 0x0D || s[e] == 0x0A { e += 1 }
            return e
        }
        // `\s*[\r\n]+`: the greedy \s* backtracks to the last line break of the whitespace run, so the piece ends
        // right after that line break ("  \n\n  x" → "  \n\n", then " ", " x"...).
        let r = run(cls, space, i, n)
        var k = r - 1
        while k >= i {
            if s[k] == 0x0D || s[k] == 0x0A { return k + 1 }
            k -= 1
        }
        return matchTrailingSpace(cls, i, n)
    }

    /// Lower-cases ASCII letters; U+017F LATIN SMALL LETTER LONG S case-folds to `s`, so Oniguruma's `(?i:'s)`
    /// matches it too.
    @inline(__always)
    private static func foldedASCII(_ v: UInt32) -> UInt32 {
        if (0x41...0x5A).contains(v) { return v | 0x20 }
        return v == 0x17F ? 0x73 : v
    }

    /// End of the run of class `c` starting at `i`.
    @inline(__always)
    private static func run(_ cls: UnsafeBufferPointer<UInt8>, _ c: UInt8, _ i: Int, _ n: Int) -> Int {
        var e = i
        while e < n && cls[e] == c { e += 1 }
        return e
    }
}
