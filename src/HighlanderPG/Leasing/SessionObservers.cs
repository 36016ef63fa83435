namespace HighlanderPG.Leasing;

/// <summary>What a runner is told by the lock session: the session connected or was lost, and its key's holder changed.</summary>
internal interface ISessionObserver
{
    /// <summary>The session connected (<paramref name="reason"/> null), was lost, or a connection attempt failed (the reason).</summary>
    void OnConnectionChanged(string? reason);

    /// <summary>Another node's hold on the observer's key was first seen, changed, or ended.</summary>
    void OnHolderChanged(LeaderInfo? holder);
}

/// <summary>
/// The runners observing a lock session, by key: a holder change reaches only its key's runner, so news about a
/// thousand keys costs a thousand calls (a multicast event would cost a million), and registering or leaving costs the
/// same whatever the number of singletons (adding to or removing from a multicast delegate copies it). A node's keys
/// are distinct (the options validator sees to it); several observers of one key are allowed all the same.
/// </summary>
internal sealed class SessionObservers
{
    private readonly Lock _gate = new();
    private readonly Dictionary<long, ISessionObserver[]> _byKey = [];

    /// <summary>Registers <paramref name="observer"/> for <paramref name="key"/>; dispose to leave.</summary>
    public IDisposable Add(long key, ISessionObserver observer)
    {
        lock (_gate)
        {
            _byKey[key] = _byKey.TryGetValue(key, out var others) ? [.. others, observer] : [observer];
        }

        return new Registration(this, key, observer);
    }

    public void ConnectionChanged(string? reason)
    {
        ISessionObserver[][] all;
        lock (_gate)
        {
            all = [.. _byKey.Values];
        }

        foreach (var observers in all)
        {
            foreach (var observer in observers)
            {
                observer.OnConnectionChanged(reason);
            }
        }
    }

    public void HolderChanged(long key, LeaderInfo? holder)
    {
        ISessionObserver[]? observers;
        lock (_gate)
        {
            observers = _byKey.GetValueOrDefault(key);
        }

        foreach (var observer in observers ?? [])
        {
            observer.OnHolderChanged(holder);
        }
    }

    private void Remove(long key, ISessionObserver observer)
    {
        lock (_gate)
        {
            if (_byKey.TryGetValue(key, out var observers))
            {
                var left = observers.Where(o => !ReferenceEquals(o, observer)).ToArray();
                if (left.Length == 0)
                {
                    _byKey.Remove(key);
                }
                else
                {
                    _byKey[key] = left;
                }
            }
        }
    }

    private sealed class Registration(SessionObservers owner, long key, ISessionObserver observer) : IDisposable
    {
        private int _disposed;

        public void Dispose()
        {
            if (Interlocked.Exchange(ref _disposed, 1) == 0)
            {
                owner.Remove(key, observer);
            }
        }
    }
}
