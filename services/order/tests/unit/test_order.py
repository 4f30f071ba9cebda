import pytest

from order.domain.events import Money, OrderConfirmed, OrderLine, OrderPlaced
from order.domain.model import InvalidOrder, Order, OrderStatus


def test_placing_records_the_event_with_the_total():
    order = Order.place("u1", [OrderLine("A", 2, 150), OrderLine("B", 1, 100)])
    assert order.status == "PENDING" and order.total_cents == 400
    placed = order.events[0]
    assert isinstance(placed, OrderPlaced) and placed.total == Money(400, "EUR") and placed.lines[0].sku == "A"


@pytest.mark.parametrize("qty", [0, -3])
def test_non_positive_quantity_names_the_line(qty):
    with pytest.raises(InvalidOrder) as err:
        Order.place("u1", [OrderLine("A", 1, 1), OrderLine("B", qty, 1)])
    assert err.value.field == "items[1].quantity"


def test_empty_order_is_refused():
    with pytest.raises(InvalidOrder):
        Order.place("u1", [])


def test_confirm_and_reject_only_move_a_pending_order_once():
    order = Order.place("u1", [OrderLine("A", 1, 1)])
    order.events.clear()
    order.confirm()
    order.confirm()
    order.reject("late")
    assert order.status == OrderStatus.CONFIRMED and [type(e) for e in order.events] == [OrderConfirmed]
    other = Order.place("u1", [OrderLine("A", 1, 1)])
    other.reject("insufficient stock")
    assert other.status == OrderStatus.REJECTED and other.reason == "insufficient stock"
