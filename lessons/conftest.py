"""pytest's settings for the tests beside the lessons: the `slow` mark (training runs, whole
figures, the data engine) that `python -m pytest -q -m "not slow"` leaves out."""


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: left out of the fast subset (-m 'not slow')")
