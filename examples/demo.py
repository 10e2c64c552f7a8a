# demo.py; this file launches events
# (the seed's demo, in Python 3, on the embedded SQLite default)

from time import sleep

from skunkqueue import SkunkQueue
from skunkqueue.persistence.sqlite import default_cfg

# Configure our queue. Backend options are sqlite (the embedded default), memory,
# and, as their issues land, redis, mongodb and fdb.
# Persistence modules have a default_cfg field.
# The first field here is the queue name.
queue = SkunkQueue("demo", **default_cfg)


# Create an event that will go onto our queue.
# Workers with this queue/route pair will execute this
# event when it's fired.
# Note that events have type skunkqueue.Event,
# not function.
@queue.event(routes=["foo"])
def add(first, second):
    # The return value gets saved by the backend.
    return first + second


# Now we launch the event.
add.fire(4, 5)
sleep(2)
# As soon as possible, an applicable worker will execute our task.
# "9" will be stored in the result section of the database.
# Additionally, the state and result fields of add will be updated.
print("result", add.result)
print("state", add.state)
