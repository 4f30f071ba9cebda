from catalog.domain.events import Line, Shortage, StockRejected, StockReleased, StockReserved
from catalog.domain.model import Product, Reservation, ReservationStatus


def stock() -> dict[str, Product]:
    return {"A": Product("A", "a", 100, 5), "B": Product("B", "b", 200, 1)}


def test_every_line_reserved_takes_the_stock_and_says_so():
    products = stock()
    r = Reservation("o1", [Line("A", 2), Line("B", 1)])
    r.reserve_from(products)
    assert r.status == ReservationStatus.RESERVED and products["A"].stock == 3 and products["B"].stock == 0
    assert isinstance(r.events[0], StockReserved) and r.events[0].order_id == "o1"


def test_one_short_line_rejects_the_whole_order_and_takes_nothing():
    products = stock()
    r = Reservation("o2", [Line("A", 2), Line("B", 2)])
    r.reserve_from(products)
    assert r.status == ReservationStatus.REJECTED and products["A"].stock == 5 and products["B"].stock == 1
    event = r.events[0]
    assert isinstance(event, StockRejected) and event.shortages == [Shortage("B", 2, 1)]


def test_unknown_sku_is_rejected_with_its_name():
    r = Reservation("o3", [Line("NOPE", 1)])
    r.reserve_from(stock())
    assert r.status == ReservationStatus.REJECTED and "NOPE" in r.events[0].reason


def test_release_gives_back_exactly_once():
    products = stock()
    r = Reservation("o4", [Line("A", 2)])
    r.reserve_from(products)
    r.release_to(products)
    r.release_to(products)
    assert products["A"].stock == 5 and r.status == ReservationStatus.RELEASED
    assert [type(e) for e in r.events] == [StockReserved, StockReleased]
