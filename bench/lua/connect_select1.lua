-- The legacy PHP pattern: connect, SELECT 1, disconnect, per event.
function thread_init()
   drv = sysbench.sql.driver()
end

function event()
   local con = drv:connect()
   con:query("SELECT 1")
   con:disconnect()
end
