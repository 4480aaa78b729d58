"""DiskSync: what another process changes under a profiles root is loaded once, never missed, and
a service's own older result never replaces a newer version loaded from disk."""

from s2swclip.profiles import DiskSync, LiveProfiles, ProfileStore

from .profile_helpers import goods


def test_a_switch_during_a_load_is_loaded_at_the_next_check(tmp_path, profile_detector):
    store, other = ProfileStore(tmp_path, profile_detector), ProfileStore(tmp_path, profile_detector)
    store.create("p", goods(1))
    live, problems = LiveProfiles(), {}
    sync = DiskSync(store, live, problems)
    sync.refresh()
    assert (live.get("p").version, sync.loads) == (1, 1)
    sync.refresh("p")
    assert sync.loads == 1  # nothing changed: one stat, no load
    other.add_references("p", goods(1, start=1))  # version 2, by "another process"
    real_load = store.load

    def load_racing(name):  # version 3 lands after the check saw version 2's pointer
        if sync.loads == 2:
            other.add_references("p", goods(1, start=2))
        return real_load(name)

    store.load = load_racing
    sync.refresh("p")
    assert live.get("p").version == 3 and sync.loads == 2
    sync.refresh("p")  # the pointer seen before the load was version 2's: checked again, once
    assert live.get("p").version == 3 and sync.loads == 3
    sync.refresh()
    assert sync.loads == 3 and problems == {}
    other.delete("p")
    sync.refresh()
    assert live.get("p") is None and live.all() == []


def test_an_own_older_version_does_not_replace_a_newer_one(tmp_path, profile_detector):
    store = ProfileStore(tmp_path, profile_detector)
    v1 = store.create("p", goods(1))
    v2 = store.add_references("p", goods(1, start=1))
    live = LiveProfiles({"p": v2})
    live.put(v1, unless_newer=True)
    assert live.get("p") is v2
    live.put(v1)  # what is on disk wins (a profile deleted and made again starts at version 1)
    assert live.get("p") is v1
