-- A read-only point query on one connection: SELECT 1 per event (needs no table, no write permission).
function thread_init()
   drv = sysbench.sql.driver()
   con = drv:connect()
end

function event()
   con:query("SELECT 1")
end

function thread_done()
   con:disconnect()
end
