import XCTest
@testable import CoQuantQuant

final class QuantPlaceholderTests: XCTestCase {
    func testLayerLinks() { XCTAssertNotNil(CoQuantQuant.self) }
}
