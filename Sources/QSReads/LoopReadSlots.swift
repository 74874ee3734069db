import NIOConcurrencyHelpers
import NIOCore
import QSStore

/// One `ReadSlot` (a read transaction kept and renewed) per event loop, made on first use:
/// a read server's connections take their loop's slot when they open, so a request costs
/// no transaction begin, no allocation and no lock.
final class LoopReadSlots: Sendable {
    private let store: Store
    private let slots = NIOLockedValueBox([ObjectIdentifier: ReadSlot]())

    init(store: Store) {
        self.store = store
    }

    /// The slot of `loop`, to be used on that loop only.
    func slot(for loop: any EventLoop) -> ReadSlot {
        slots.withLockedValue { slots in
            if let slot = slots[ObjectIdentifier(loop)] { return slot }
            let slot = store.makeReadSlot()
            slots[ObjectIdentifier(loop)] = slot
            return slot
        }
    }
}
