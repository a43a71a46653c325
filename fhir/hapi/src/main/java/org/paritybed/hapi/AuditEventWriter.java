package org.paritybed.hapi;

import ca.uhn.fhir.jpa.api.dao.IFhirSystemDao;
import ca.uhn.fhir.rest.api.server.SystemRequestDetails;
import ca.uhn.fhir.storage.interceptor.balp.IBalpAuditEventSink;
import jakarta.annotation.PreDestroy;
import java.util.ArrayList;
import java.util.List;
import java.util.concurrent.LinkedBlockingQueue;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.AtomicLong;
import org.hl7.fhir.r4.model.AuditEvent;
import org.hl7.fhir.r4.model.Bundle;
import org.slf4j.Logger;
import org.slf4j.LoggerFactory;

/**
 * Stores HAPI's BALP AuditEvents in the same server, as a hospital's FHIR server keeps its own
 * audit trail, so they can be exported with an ordinary {@code GET /fhir/AuditEvent} search.
 *
 * <p>Events are queued and written by one background thread in transaction bundles of up to
 * {@link #BATCH} events: the BALP hooks run inside the request (some inside its database
 * transaction), and a write there would slow every request and contend for the same rows.
 * Writes go through the system DAO with a {@link SystemRequestDetails}, which does not pass the
 * REST server's interceptors, so storing an AuditEvent is not itself audited.
 * {@link #pending()} (served at {@code /paritybed/audit}) lets an exporter wait until every
 * event of the requests it made has been stored.
 */
public class AuditEventWriter implements IBalpAuditEventSink {

	static final int BATCH = 500;
	private static final Logger LOG = LoggerFactory.getLogger(AuditEventWriter.class);

	private final IFhirSystemDao<Bundle, ?> systemDao;
	private final LinkedBlockingQueue<AuditEvent> queue = new LinkedBlockingQueue<>();
	private final AtomicLong pending = new AtomicLong();
	private final AtomicLong written = new AtomicLong();
	private final AtomicLong failed = new AtomicLong();
	private volatile String lastError = "";
	private final Thread thread;

	public AuditEventWriter(IFhirSystemDao<Bundle, ?> systemDao) {
		this.systemDao = systemDao;
		this.thread = new Thread(this::run, "balp-audit-writer");
		this.thread.setDaemon(true);
		this.thread.start();
	}

	@Override
	public void recordAuditEvent(AuditEvent event) {
		pending.incrementAndGet();
		queue.add(event);
	}

	/** Events recorded but not yet stored (queued or in the batch being written). */
	public long pending() {
		return pending.get();
	}

	public long written() {
		return written.get();
	}

	public long failed() {
		return failed.get();
	}

	public String lastError() {
		return lastError;
	}

	private void run() {
		List<AuditEvent> batch = new ArrayList<>(BATCH);
		while (!Thread.currentThread().isInterrupted()) {
			try {
				AuditEvent first = queue.poll(1, TimeUnit.SECONDS);
				if (first == null) {
					continue;
				}
				batch.add(first);
				queue.drainTo(batch, BATCH - 1);
				store(batch);
			} catch (InterruptedException e) {
				Thread.currentThread().interrupt();
			} finally {
				pending.addAndGet(-batch.size());
				batch.clear();
			}
		}
	}

	/** One transaction for the batch; if it fails, each event on its own, so one bad event loses only itself. */
	private void store(List<AuditEvent> batch) {
		try {
			systemDao.transaction(new SystemRequestDetails(), transaction(batch));
			written.addAndGet(batch.size());
			return;
		} catch (RuntimeException e) {
			if (batch.size() == 1) {
				failed.incrementAndGet();
				lastError = e.toString();
				LOG.error("could not store a BALP AuditEvent: {}", e.toString());
				return;
			}
		}
		for (AuditEvent event : batch) {
			store(List.of(event));
		}
	}

	private static Bundle transaction(List<AuditEvent> events) {
		Bundle tx = new Bundle().setType(Bundle.BundleType.TRANSACTION);
		for (AuditEvent event : events) {
			tx.addEntry().setResource(event).getRequest().setMethod(Bundle.HTTPVerb.POST).setUrl("AuditEvent");
		}
		return tx;
	}

	@PreDestroy
	public void stop() {
		thread.interrupt();
	}
}
