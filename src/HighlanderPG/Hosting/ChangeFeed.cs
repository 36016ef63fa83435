using System.Runtime.CompilerServices;
using System.Threading.Channels;

namespace HighlanderPG.Hosting;

/// <summary>
/// Hands changes (of singletons' states, of groups' members) to <see cref="WatchAsync"/> subscribers and
/// <see cref="Changed"/> handlers from one task of its own, in order, so that a slow handler never holds up the session
/// loop, a runner on its way to stopping a child, or a group's supervisor. A subscriber that does not keep up loses the
/// oldest changes rather than growing without bound.
/// </summary>
internal sealed class ChangeFeed<T>
{
    private readonly Channel<T> _changes = Channel.CreateUnbounded<T>(new UnboundedChannelOptions { SingleReader = true });
    private readonly Lock _subscribersGate = new();
    private readonly List<Channel<T>> _subscribers = [];
    private bool _completed;
    private Task _dispatcher = Task.CompletedTask;

    public event EventHandler<T>? Changed;

    public void Publish(T change) => _changes.Writer.TryWrite(change);

    public void Start(object sender, Action<Exception> handlerFailed) =>
        _dispatcher = Task.Run(() => DispatchAsync(sender, handlerFailed), CancellationToken.None);

    /// <summary>Ends the feed once every change published so far was handed on; subscribers' enumerations then end.</summary>
    public async Task CompleteAsync()
    {
        _changes.Writer.TryComplete();
        await _dispatcher.ConfigureAwait(false);
        CompleteSubscribers(); // also when the dispatcher never started
    }

    public IAsyncEnumerable<T> WatchAsync(CancellationToken cancellationToken)
    {
        // Subscribed at the call, not at the first MoveNext, so that nothing between the two is missed.
        var channel = Channel.CreateBounded<T>(new BoundedChannelOptions(1024) { SingleReader = true, FullMode = BoundedChannelFullMode.DropOldest });
        lock (_subscribersGate)
        {
            if (_completed)
            {
                channel.Writer.TryComplete();
            }
            else
            {
                _subscribers.Add(channel);
            }
        }

        return ReadAsync(channel, cancellationToken);
    }

    private async IAsyncEnumerable<T> ReadAsync(Channel<T> channel, [EnumeratorCancellation] CancellationToken cancellationToken)
    {
        try
        {
            await foreach (var change in channel.Reader.ReadAllAsync(cancellationToken).ConfigureAwait(false))
            {
                yield return change;
            }
        }
        finally
        {
            lock (_subscribersGate)
            {
                _subscribers.Remove(channel);
            }
        }
    }

    private async Task DispatchAsync(object sender, Action<Exception> handlerFailed)
    {
        await foreach (var change in _changes.Reader.ReadAllAsync().ConfigureAwait(false))
        {
            lock (_subscribersGate)
            {
                foreach (var subscriber in _subscribers)
                {
                    subscriber.Writer.TryWrite(change);
                }
            }

            try
            {
                Changed?.Invoke(sender, change);
            }
            catch (Exception ex)
            {
                handlerFailed(ex);
            }
        }

        CompleteSubscribers();
    }

    private void CompleteSubscribers()
    {
        lock (_subscribersGate)
        {
            _completed = true;
            foreach (var subscriber in _subscribers)
            {
                subscriber.Writer.TryComplete();
            }
        }
    }
}
