import CoQuantTensor
import Foundation
import XCTest
@testable import CoQuantModel

/// Bit packing of quantized codes, uniform and with per-group widths (ResQ/CoQuant's 4-bit low and 8-bit high
/// column blocks, the high columns not contiguous as in o_proj).
final class PackedLinearTests: XCTestCase {
    func testMixedWidthCodesRoundTripThroughAFile() throws {
        let rows = 5, cols = 37
        // Columns 3, 10, 11 and the last 4 in group 1 (8 bits), the rest in group 0 (4 bits).
        let high: Set<Int> = [3, 10, 11, 33, 34, 35, 36]
        let groupIndex = (0..<cols).map { Int32(high.contains($0) ? 1 : 0) }
        var g = SeededGenerator(seed: 11)    // reproducible codes
        let codes = (0..<(rows * cols)).map { i in Int32.random(in: 0...(high.contains(i % cols) ? 255 : 15), using: &g) }
        let scales = (0..<(rows * 2)).map { Float($0 + 1) * 0.01 }, zeros = (0..<(rows * 2)).map { Float($0 % 2 == 0 ? 8 : 128) }
        let p = PackedLinear(bits: 8, rows: rows, cols: cols, codes: codes, scales: scales, zeros: zeros,
                             groupIndex: groupIndex, groupBits: [4, 8])
        XCTAssertEqual(p.rowBytes, (30 * 4 + 7 * 8 + 7) / 8, "each group at its own width")
        XCTAssertEqual(p.codes, codes)
        let uniform = PackedLinear(bits: 8, rows: rows, cols: cols, codes: codes, scales: scales, zeros: zeros, groupIndex: groupIndex)
        XCTAssertEqual(uniform.rowBytes, cols)
        XCTAssertEqual(uniform.dequantized(), p.dequantized())

        // Through a safetensors file, as the quantized folder stores it.
        let path = NSTemporaryDirectory() + "coquant-packed-\(getpid()).safetensors"
        defer { try? FileManager.default.removeItem(atPath: path) }
        func readBack(groupBits: [Int32]) throws -> PackedLinear? {
            var w = SafeTensorsWriter()
            w.add("x.qweight", bytes: p.packed, shape: [rows, p.rowBytes])
            w.add("x.scales", scales, shape: [rows, 2])
            w.add("x.zeros", zeros, shape: [rows, 2])
            w.add("x.g_idx", groupIndex, shape: [cols])
            w.add("x.group_bits", groupBits, shape: [2])
            try w.write(to: path)
            return try SafeTensorsCheckpoint(files: [try SafeTensorsFile(path: path)]).packedLinear("x", bits: 8, rows: rows, cols: cols)
        }
        let read = try readBack(groupBits: [4, 8])
        XCTAssertEqual(read?.codes, codes)
        XCTAssertEqual(read?.dequantized(), p.dequantized())

        // A width above the container's is refused, naming the tensor.
        XCTAssertThrowsError(try readBack(groupBits: [4, 9])) {
            XCTAssertTrue("\($0)".contains("x.group_bits"), "\($0)")
        }
    }
}
